/* SPDX-License-Identifier: GPL-2.0 */
/* What registry.c offers the layers above it (kmod/doc/LAYERS.md): only they include it. */
#ifndef CBLB_REGISTRY_H
#define CBLB_REGISTRY_H

#include "cblb.h"

extern int cblb_total;
int cblb_registry_init(void);
void cblb_registry_exit(void);
int cblb_cmd_create(const char *name, const char *origin);
int cblb_cmd_remove(const char *name);
int cblb_debug_show(char *buf);
struct cblb_snapshot *cblb_find(const char *name);
struct cblb_snapshot *cblb_catalog_meets_origin(struct cblb_snapshot *s, bool catalog_of_s);

#endif /* CBLB_REGISTRY_H */
