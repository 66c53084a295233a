/* SPDX-License-Identifier: GPL-2.0 */
/* What stack.c offers the layers above it (kmod/doc/LAYERS.md): only they include it. */
#ifndef CBLB_STACK_H
#define CBLB_STACK_H

#include "cblb.h"

bool cblb_bdev_overlaps_origin(struct cblb_snapshot *s, struct block_device *bdev);
int cblb_stack_reaches_origin(struct cblb_snapshot *s, struct block_device *bdev,
			      char *top, size_t top_size);
int cblb_sb_reaches_origin(struct cblb_snapshot *s, struct super_block *sb, char *top,
			   size_t top_size);

#endif /* CBLB_STACK_H */
