// SPDX-License-Identifier: GPL-2.0
/*
 * The base every layer may call (kmod/doc/LAYERS.md): a snapshot's state and its changes,
 * the name rule, passing a bio on, and the mutex that serialises commands.
 *
 * Lock story:
 * - cblb_cmd_lock (mutex) serialises every command ("create", "start", "remove",
 *   "track", ...) and module exit; what it protects is named where it is declared
 *   (the registry's slots, the tracker's hash writers, the tracked origins). It is held
 *   across "start" (freeze, track, thaw): nothing that runs while an origin is frozen
 *   takes it.
 * - A snapshot's state changes under its state_lock (spinlock): cblb_set_state() by the
 *   commands, cblb_fail() from any layer that finds the snapshot cannot go on (the COW
 *   pipeline, the store) without the command mutex. Readers peek with READ_ONCE().
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/ctype.h>
#include <linux/string.h>
#include "cblb.h"
#include "cblb_trace.h"

DEFINE_MUTEX(cblb_cmd_lock);

static const char *const state_names[] = {
	[CBLB_CREATED] = "created",
	[CBLB_ACTIVE] = "active",
	[CBLB_FAILED] = "failed",
};

const char *cblb_state_name(enum cblb_state state)
{
	return state < ARRAY_SIZE(state_names) ? state_names[state] : "unknown";
}

void cblb_set_state(struct cblb_snapshot *s, enum cblb_state new)
{
	enum cblb_state old;

	spin_lock(&s->state_lock);
	old = s->state;
	WRITE_ONCE(s->state, new);
	spin_unlock(&s->state_lock);
	trace_cblb_state(s->name, cblb_state_name(old), cblb_state_name(new));
}

/*
 * Move an active snapshot to failed with a reason. Any context that may sleep; the first
 * reason wins. Origin writes pass untouched from now on.
 */
void cblb_fail(struct cblb_snapshot *s, const char *fmt, ...)
{
	va_list ap;
	bool first = false;

	spin_lock(&s->state_lock);
	if (s->state == CBLB_ACTIVE) {
		va_start(ap, fmt);
		vsnprintf(s->error, sizeof(s->error), fmt, ap);
		va_end(ap);
		WRITE_ONCE(s->state, CBLB_FAILED);
		first = true;
	}
	spin_unlock(&s->state_lock);
	if (first) {
		pr_warn("%s: snapshot failed: %s\n", s->name, s->error);
		trace_cblb_state(s->name, "active", "failed");
	}
}

bool cblb_valid_name(const char *name)
{
	size_t i, n = strlen(name);

	if (!n || n > CBLB_NAME_MAX || !isalnum(name[0]))
		return false;
	for (i = 0; i < n; i++)
		if (!isalnum(name[i]) && !strchr("._-", name[i]))
			return false;
	return true;
}

/*
 * Pass a bio on to the block layer. Never a tail call: the hook tells these calls
 * from all others by their return address, which must lie inside this module.
 */
noinline void cblb_pass_bio(struct bio *bio)
{
	submit_bio_noacct(bio);
	barrier();
}
