/* SPDX-License-Identifier: GPL-2.0 */
/* What cbt.c offers the layers above it (kmod/doc/LAYERS.md): only they include it. */
#ifndef CBLB_CBT_H
#define CBLB_CBT_H

#include "cblb.h"

struct cblb_cbt;
extern atomic_t cblb_nr_cbt;
void cblb_cbt_init(struct kobject *parent);
void cblb_cbt_mark(struct bio *bio, bool again);
int cblb_cbt_attach(struct cblb_snapshot *s);
void cblb_cbt_detach(struct cblb_cbt *c);
int cblb_cbt_prepare(struct cblb_snapshot *s);
void cblb_cbt_dual(struct cblb_snapshot *s);
void cblb_cbt_flip(struct cblb_snapshot *s);
void cblb_cbt_frozen(struct cblb_snapshot *s);
void cblb_cbt_unflip(struct cblb_snapshot *s);
unsigned int cblb_cbt_block_size(struct cblb_snapshot *s);
ssize_t cblb_cbt_read_map(struct cblb_snapshot *s, char *buf, loff_t off, size_t count);
int cblb_cmd_track(const char *path);
int cblb_cmd_untrack(const char *path);
int cblb_cmd_seal(const char *path);
int cblb_cmd_resume(const char *path, const char *generation, u64 sequence,
		    unsigned int block_size, const char *fresh);
void cblb_cbt_exit(void);

#endif /* CBLB_CBT_H */
