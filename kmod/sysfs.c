// SPDX-License-Identifier: GPL-2.0
/*
 * /sys/kernel/cblb: the seed's command file and the debug summary (a snapshot's folder:
 * snapsysfs.c).
 *
 * Commands (kmod/doc/INTERFACE.md): "create <dev> <partition> begin end",
 * "start <dev> <catalog> <file size> <max files>", "remove <dev>", and
 * "startset <set> <dev> <catalog> <file size> <max files> ..." (doc/SETS.md). One per write();
 * blanks separate words; a trailing newline is accepted. A refused command fails the
 * write() with its errno and logs one rate-limited line saying why. Writing needs
 * CAP_SYS_ADMIN (EPERM otherwise).
 *
 * Lock story: attribute show() reads snapshot fields without locks (READ_ONCE, atomics);
 * removing a snapshot's kobject waits for running show() calls, and the kobject's
 * release frees the snapshot. Commands take cblb_cmd_lock in registry.c.
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/capability.h>
#include <linux/kernel.h>
#include <linux/kobject.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/sysfs.h>
#include "cblb.h"
#include "cbt.h"
#include "snapsysfs.h"
#include "registry.h"
#include "start.h"
#include "sysfs.h"

#define CMD_MAX		PAGE_SIZE
#define CMD_WORDS	(2 + 4 * CBLB_SET_MAX)

static struct kobject *cblb_kobj;

static int split_words(char *line, char **words, int max)
{
	int n = 0;
	char *w;

	while ((w = strsep(&line, " \t\n")) != NULL) {
		if (!*w)
			continue;
		if (n == max)
			return -E2BIG;
		words[n++] = w;
	}
	return n;
}

/* "startset <set>" followed by 1..CBLB_SET_MAX groups of the words of "start". */
static int run_startset(char **w, int n)
{
	struct cblb_start_member *m;
	int i, nr = (n - 2) / 4, err = -EINVAL;

	if (n < 6 || (n - 2) % 4)
		goto usage;
	m = kcalloc(nr, sizeof(*m), GFP_KERNEL);
	if (!m)
		return -ENOMEM;
	for (i = 0; i < nr; i++) {
		char **g = w + 2 + 4 * i;
		unsigned long long blocks;
		unsigned int files;

		if (kstrtoull(g[2], 10, &blocks) || kstrtouint(g[3], 10, &files)) {
			kfree(m);
			goto usage;
		}
		m[i].name = g[0];
		m[i].catalog = g[1];
		m[i].file_blocks = blocks;
		m[i].max_files = files;
	}
	err = cblb_cmd_start_set(w[1], m, nr);
	kfree(m);
	return err;
usage:
	pr_notice_ratelimited("startset: usage: startset <set> <dev> <catalog> <file size> <max files> [<dev> <catalog> <file size> <max files> ...] (1..%d members)\n",
			      CBLB_SET_MAX);
	return err;
}

/* The commands of one argument: the word they take, the function they run. */
static const struct {
	const char *name, *arg;
	int (*run)(const char *arg);
} one_word_cmds[] = {
	{ "remove", "dev", cblb_cmd_remove },
	{ "track", "partition", cblb_cmd_track },
	{ "untrack", "partition", cblb_cmd_untrack },
	{ "seal", "partition", cblb_cmd_seal },
};

static int run_cmd(char *line, char **w)
{
	int n = split_words(line, w, CMD_WORDS);
	unsigned long long blocks, seq;
	unsigned int files, bsize;
	size_t i;

	if (n == -E2BIG && !strcmp(w[0], "startset")) {
		pr_notice_ratelimited("startset: at most %d members\n", CBLB_SET_MAX);
		return -E2BIG;
	}
	if (n <= 0)
		goto usage;
	if (!strcmp(w[0], "create")) {
		if (n != 5 || strcmp(w[3], "begin") || strcmp(w[4], "end")) {
			pr_notice_ratelimited("create: usage: create <dev> <partition> begin end\n");
			return -EINVAL;
		}
		return cblb_cmd_create(w[1], w[2]);
	}
	if (!strcmp(w[0], "start")) {
		if (n != 5 || kstrtoull(w[3], 10, &blocks) || kstrtouint(w[4], 10, &files)) {
			pr_notice_ratelimited("start: usage: start <dev> <catalog> <file size> <max files>\n");
			return -EINVAL;
		}
		return cblb_cmd_start(w[1], w[2], blocks, files);
	}
	if (!strcmp(w[0], "startset"))
		return run_startset(w, n);
	for (i = 0; i < ARRAY_SIZE(one_word_cmds); i++) {
		if (strcmp(w[0], one_word_cmds[i].name))
			continue;
		if (n != 2) {
			pr_notice_ratelimited("%s: usage: %s <%s>\n", w[0], w[0],
					      one_word_cmds[i].arg);
			return -EINVAL;
		}
		return one_word_cmds[i].run(w[1]);
	}
	if (!strcmp(w[0], "resume")) {
		if (n != 6 || kstrtoull(w[3], 10, &seq) || kstrtouint(w[4], 10, &bsize)) {
			pr_notice_ratelimited("resume: usage: resume <partition> <generation> <sequence> <block size> <fresh generation>\n");
			return -EINVAL;
		}
		return cblb_cmd_resume(w[1], w[2], seq, bsize, w[5]);
	}
usage:
	pr_notice_ratelimited("unknown command; use create, start, startset, remove, track, untrack, seal or resume\n");
	return -EINVAL;
}

static ssize_t cmd_store(struct kobject *kobj, struct kobj_attribute *attr, const char *buf,
			 size_t count)
{
	char *line, **words;
	int err;

	/* The file's mode is not enough: a root without CAP_SYS_ADMIN may not snapshot. */
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (count >= CMD_MAX) {
		pr_notice_ratelimited("command longer than %lu bytes\n", (unsigned long)CMD_MAX - 1);
		return -E2BIG;
	}
	line = kmemdup_nul(buf, count, GFP_KERNEL);
	if (!line)
		return -ENOMEM;
	words = kmalloc_array(CMD_WORDS, sizeof(*words), GFP_KERNEL);
	if (!words) {
		err = -ENOMEM;
		goto out_line;
	}
	err = run_cmd(line, words);
	kfree(words);
out_line:
	kfree(line);
	return err ? err : count;
}

static ssize_t debug_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	return cblb_debug_show(buf);
}

static ssize_t set_refused_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	return cblb_set_refused_show(buf);
}

static struct kobj_attribute cmd_attr = __ATTR_WO(cmd);
static struct kobj_attribute debug_attr = __ATTR_RO(debug);
static struct kobj_attribute set_refused_attr = __ATTR_RO(set_refused);

static struct attribute *cblb_root_attrs[] = {
	&cmd_attr.attr,
	&debug_attr.attr,
	&set_refused_attr.attr,
	NULL,
};

static const struct attribute_group cblb_root_group = {
	.attrs = cblb_root_attrs,
};

int cblb_sysfs_init(void)
{
	int err;

	cblb_kobj = kobject_create_and_add("cblb", kernel_kobj);
	if (!cblb_kobj)
		return -ENOMEM;
	err = sysfs_create_group(cblb_kobj, &cblb_root_group);
	if (err)
		goto fail_group;
	cblb_snapsysfs_init(cblb_kobj);
	cblb_cbt_init(cblb_kobj);
	return 0;

fail_group:
	kobject_put(cblb_kobj);
	cblb_kobj = NULL;
	return err;
}

void cblb_sysfs_exit(void)
{
	sysfs_remove_group(cblb_kobj, &cblb_root_group);
	kobject_put(cblb_kobj);
}
