/* SPDX-License-Identifier: GPL-2.0 */
/* What overlay.c offers the layers above it (kmod/doc/LAYERS.md): only they include it. */
#ifndef CBLB_OVERLAY_H
#define CBLB_OVERLAY_H

#include "cblb.h"

bool cblb_overlay_read(struct cblb_snapshot *s, struct bio *parent, struct bvec_iter *iter);
int cblb_overlay_init(struct cblb_snapshot *s);
void cblb_overlay_exit(struct cblb_snapshot *s);

/* One piece of a snapshot read is done (the parent counts its pieces, bio_inc_remaining). */
static inline void cblb_read_piece_done(struct bio *parent, blk_status_t status)
{
	if (status && !parent->bi_status)
		parent->bi_status = status;
	bio_endio(parent);
}

#endif /* CBLB_OVERLAY_H */
