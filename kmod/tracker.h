/* SPDX-License-Identifier: GPL-2.0 */
/* What tracker.c offers the layers above it (kmod/doc/LAYERS.md): only they include it. */
#ifndef CBLB_TRACKER_H
#define CBLB_TRACKER_H

#include "cblb.h"

int cblb_tracker_init(void);
void cblb_tracker_exit(void);
void cblb_tracker_add(struct cblb_snapshot *s);
void cblb_tracker_del(struct cblb_snapshot *s);
void cblb_tracker_open_gate(u64 seq);

#endif /* CBLB_TRACKER_H */
