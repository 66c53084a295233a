/* SPDX-License-Identifier: GPL-2.0 */
/* What sysfs.c offers the layers above it (kmod/doc/LAYERS.md): only they include it. */
#ifndef CBLB_SYSFS_H
#define CBLB_SYSFS_H

#include "cblb.h"

int cblb_sysfs_init(void);
void cblb_sysfs_exit(void);

#endif /* CBLB_SYSFS_H */
