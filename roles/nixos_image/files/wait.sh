#!/bin/sh
# nixforge.images.nixos_image: wait up to SECONDS for the build in WORKDIR to end,
# then print "finished CODE" or "running", and the last LINES lines of its log.
# usage: wait.sh WORKDIR SECONDS LINES
cd "$1" || exit 1
i=0
while [ "$i" -lt "$2" ] && [ ! -e exit-code ]; do
  sleep 1
  i=$((i + 1))
done
if [ -e exit-code ]; then echo "finished $(cat exit-code)"; else echo running; fi
tail -n "$3" build.log 2>/dev/null || true
