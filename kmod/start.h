/* SPDX-License-Identifier: GPL-2.0 */
/* What start.c offers the layers above it (kmod/doc/LAYERS.md): only they include it. */
#ifndef CBLB_START_H
#define CBLB_START_H

#include "cblb.h"

/* One member of a start: the words of the seed's "start" command. */
struct cblb_start_member {
	const char *name;
	const char *catalog;
	u64 file_blocks;
	u32 max_files;
	struct cblb_snapshot *snap;	/* filled in by the command */
	int freeze_err;
	bool fs_frozen;			/* a filesystem on the origin was frozen */
};
int cblb_cmd_start(const char *name, const char *catalog, u64 file_blocks, u32 max_files);
int cblb_cmd_start_set(const char *set, struct cblb_start_member *m, int n);
ssize_t cblb_set_refused_show(char *buf);

#endif /* CBLB_START_H */
