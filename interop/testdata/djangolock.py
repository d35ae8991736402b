"""Takes a lock with django_pglocks.advisory_lock(name). (Not named
django_pglocks.py, which would hide the package.)

    python3 djangolock.py hold DATABASE_URL NAME  # prints "held", then
                                                      # waits for stdin to end
    python3 djangolock.py try DATABASE_URL NAME   # wait=False: prints
                                                      # acquired or refused

Run it with Debian's /usr/bin/python3, which sees python3-django-pglocks.
"""
import sys
from urllib.parse import urlsplit

import django
from django.conf import settings

mode, url, name = sys.argv[1:4]
u = urlsplit(url)
settings.configure(DATABASES={"default": {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": u.path.lstrip("/"),
    "USER": u.username or "",
    "PASSWORD": u.password or "",
    "HOST": u.hostname or "",
    "PORT": str(u.port or ""),
}})
django.setup()

from django_pglocks import advisory_lock  # noqa: E402 (needs settings)

if mode == "hold":
    with advisory_lock(name):
        print("held", flush=True)
        sys.stdin.read()
else:
    with advisory_lock(name, wait=False) as acquired:
        print("acquired" if acquired else "refused")
