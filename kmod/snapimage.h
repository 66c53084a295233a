/* SPDX-License-Identifier: GPL-2.0 */
/* What snapimage.c offers the layers above it (kmod/doc/LAYERS.md): only they include it. */
#ifndef CBLB_SNAPIMAGE_H
#define CBLB_SNAPIMAGE_H

#include "cblb.h"

int cblb_snapimage_init(void);
void cblb_snapimage_exit(void);
int cblb_snapimage_create(struct cblb_snapshot *s);
void cblb_snapimage_destroy(struct cblb_snapshot *s);

#endif /* CBLB_SNAPIMAGE_H */
