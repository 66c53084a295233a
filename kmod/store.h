/* SPDX-License-Identifier: GPL-2.0 */
/* What store.c offers the layers above it (kmod/doc/LAYERS.md): only they include it. */
#ifndef CBLB_STORE_H
#define CBLB_STORE_H

#include "cblb.h"

int cblb_store_init(struct cblb_snapshot *s, const char *catalog, u64 file_blocks,
		    u32 max_files);
void cblb_store_unname(struct cblb_store *st);
void cblb_store_started(struct cblb_store *st);
void cblb_store_exit(struct cblb_store *st);
int cblb_store_write_file(struct cblb_store *st, u64 slot, struct page *page);
int cblb_store_read_file(struct cblb_store *st, u64 slot, unsigned int off, void *buf,
			 unsigned int len);
int cblb_store_alloc(struct cblb_store *st, unsigned int n, u64 *first);
unsigned int cblb_store_locate(struct cblb_store *st, u64 slot, unsigned int off,
			       sector_t *sector);
unsigned int cblb_store_files(struct cblb_store *st);
u64 cblb_store_capacity(struct cblb_store *st);
int cblb_store_show_extents(struct cblb_store *st, char *buf);

#endif /* CBLB_STORE_H */
