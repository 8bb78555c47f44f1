#!/bin/sh
# Serve /srv/www on $PORT in the foreground, as user web.
exec httpd -f -u web -p "${PORT:-8080}" -h /srv/www
