/* SPDX-License-Identifier: GPL-2.0 */
/* What snapsysfs.c offers the layers above it (kmod/doc/LAYERS.md): only they include it. */
#ifndef CBLB_SNAPSYSFS_H
#define CBLB_SNAPSYSFS_H

#include "cblb.h"

void cblb_snapsysfs_init(struct kobject *parent);
int cblb_snapsysfs_add(struct cblb_snapshot *s);
void cblb_snapsysfs_hide(struct cblb_snapshot *s);
void cblb_snapsysfs_del(struct cblb_snapshot *s);

#endif /* CBLB_SNAPSYSFS_H */
