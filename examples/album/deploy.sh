#!/usr/bin/env bash
# Sets the album up on a running Yun: collections, security rules, indexes, the share
# function. Idempotent; uses the yun CLI's connection (flags, YUN_* variables, or
# ./.yun/credentials.json). Run from anywhere: `examples/album/deploy.sh`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
yun="${YUN:-yun}"

# Runs a yun command; "already exists" counts as done, any other error stops the script.
ensure() {
  local out
  if ! out=$("$yun" "$@" 2>&1); then
    grep -qi "exist" <<<"$out" || { echo "$out" >&2; exit 1; }
  fi
}

for collection in albums photos likes comments shares; do
  ensure db create "$collection"
  "$yun" db rules set "$collection" "@$here/rules/$collection.json" >/dev/null
done
"$yun" storage rules set "@$here/rules/storage.json" >/dev/null

ensure db index create albums by_owner --field _openid --field createdAt:desc
ensure db index create photos by_album --field albumId --field createdAt
ensure db index create likes one_per_user --field photoId --field _openid --unique
ensure db index create comments by_photo --field photoId --field createdAt
ensure db index create shares by_album --field albumId

"$yun" fn deploy "$here/functions/share" --name share --timeout 10 >/dev/null
echo "album deployed: collections, rules, indexes and the share function are in place"
