"""A fake machine behind the real :class:`~cblb.control.Controller`, for host tests and the
demo page (``cblb web --standin``): :class:`FakeSystem` (:mod:`.system`), split by what it
fakes, each part only answering as the kernel or the program would (every rule and message
about what a person may do stays in cblb/control.py):

- :mod:`.programs` - insmod, rmmod, modinfo, blkid, mount and umount
- :mod:`.module`   - cblb_module's sysfs files in a temporary folder and the commands written
  to ``cmd``, carried out as the module does (kmod/doc/INTERFACE.md, kmod/doc/SETS.md)
- :mod:`.tracking` - changed-block tracking as cbt.c does it (kmod/doc/CBT.md)
- :mod:`.devices`  - the origins and snapshot devices, the files holding their data (so
  backups and verification read real bytes) and their mounts
- :mod:`.sysfs`    - one value per file

Calls go down that list; :mod:`.system` sits over all of them.
"""

from .system import FakeSystem

__all__ = ["FakeSystem"]
