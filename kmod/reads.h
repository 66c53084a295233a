/* SPDX-License-Identifier: GPL-2.0 */
/* What reads.c offers the layers above it (kmod/doc/LAYERS.md): only they include it. */
#ifndef CBLB_READS_H
#define CBLB_READS_H

#include "cblb.h"

void cblb_reads_init(struct cblb_snapshot *s);
void cblb_reads_begin(struct cblb_snapshot *s, struct cblb_read_range *r, u64 first, u64 last,
		      const unsigned long *copied);
void cblb_reads_forget(struct cblb_snapshot *s, struct cblb_read_range *r);
void cblb_reads_end(struct cblb_snapshot *s);
bool cblb_reads_none(struct cblb_snapshot *s);
bool cblb_reads_overlap(struct cblb_snapshot *s, u64 first, u64 last);
void cblb_reads_wait(struct cblb_snapshot *s, u64 first, u64 last);
void cblb_reads_close(struct cblb_snapshot *s);

#endif /* CBLB_READS_H */
