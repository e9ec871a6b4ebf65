"""Publish-once across restarts and instances: two-phase reservations in Redis.

Each document is known by two marks: its id (when the channel gave one) and a
fingerprint of (source, normalised text). A document is published only by the
instance that holds a lease on both, and a mark says "seen" only once Kafka has
acknowledged the document:

1. ``reserve``: for every document whose marks are free, write a lease (this process's
   token and an expiry), atomically for a whole batch, in one Lua call.
2. Publish what was reserved; wait for the broker's acknowledgement.
3. ``confirm``: write "done" marks.

A process that dies between 1 and 3 leaves leases, not "done" marks, so nothing is
lost: its documents are re-read (file checkpoints never passed them) and published
by whoever takes the lease next. Its own restart takes them over at once (leases
carry the instance id); another instance waits for the lease to expire. A document
leased by a live instance elsewhere is *busy*: the caller asks again later, it is
never dropped.

Storage: marks are fields of hashes bucketed by time (``<prefix>ingest:id:<n>`` for
ids, ``...:text:<n>`` for texts), each bucket expiring as a whole. One HMGET per
bucket and one HSET per batch replace thousands of per-key SET/PX calls, which cost
Redis several microseconds each. A mark lives for its TTL (the id TTL, or the text
window) plus at most one bucket width (TTL / BUCKETS). All keys of a batch are
touched by one script, so the marks need one Redis, not a cluster.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from enum import IntEnum
from typing import Any

import redis

BUCKETS = 2  # buckets per TTL: the mark outlives its TTL by at most TTL / BUCKETS
MAX_DOCS_PER_CALL = 1000  # keeps Lua's unpack() well inside its stack limit

# Shared head of the scripts. ARGV: id prefix, text prefix, docs ("<id> <text>\n"
# each, id empty when the channel gave none), id bucket ms, text bucket ms, buckets.
_HEAD = """
local idp, textp = ARGV[1], ARGV[2]
local id_w, text_w, n = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids, texts = {}, {}
for id, text in string.gmatch(ARGV[3], "(%w*) (%w+)\\n") do
  ids[#ids + 1] = id
  texts[#texts + 1] = text
end
local function present(list)
  local fields, at = {}, {}
  for i = 1, #list do
    if list[i] ~= '' then
      fields[#fields + 1] = list[i]
      at[#fields] = i
    end
  end
  return fields, at
end
-- Write field/value pairs into the current bucket of a space, and let the bucket
-- expire once its newest possible mark is older than the TTL.
local function store(prefix, width, ttl, kv)
  if #kv == 0 then return end
  local b = math.floor(now / width)
  redis.call('HSET', prefix .. b, unpack(kv))
  redis.call('PEXPIRE', prefix .. b, (b + 1) * width + ttl - now + 1000)
end
"""

# Extra ARGV: token, instance prefix, lease ms. Verdict digits, one per document.
_RESERVE = (
    _HEAD
    + """
local token, mine, lease = ARGV[7], ARGV[8], tonumber(ARGV[9])
-- The state of each field over the live buckets: 'd' if seen, else the live lease
-- of the latest bucket, else nil.
local function states(prefix, width, list)
  local out = {}
  local fields, at = present(list)
  if #fields == 0 then return out end
  local b = math.floor(now / width)
  for k = b - n, b do
    local vals = redis.call('HMGET', prefix .. k, unpack(fields))
    for j = 1, #fields do
      local v, i = vals[j], at[j]
      if v and out[i] ~= 'd' then
        if v == 'd' then
          out[i] = 'd'
        elseif (tonumber(string.match(v, '|(%d+)$')) or 0) > now then
          out[i] = v
        end
      end
    end
  end
  return out
end
-- 1: a duplicate (seen, or in flight in this very process); 3: leased by another
-- live instance; 0: free, or leased by an earlier life of this instance.
local function judge(v)
  if not v then return 0 end
  if v == 'd' then return 1 end
  local owner = string.match(v, '^(.*)|') or ''
  if owner == token then return 1 end
  if string.sub(owner, 1, #mine) == mine then return 0 end
  return 3
end
local id_states = states(idp, id_w, ids)
local text_states = states(textp, text_w, texts)
local value = token .. '|' .. (now + lease)
local taken_id, taken_text = {}, {}
local id_pairs, text_pairs, out = {}, {}, {}
for i = 1, #texts do
  local id, text = ids[i], texts[i]
  local a, b = judge(id_states[i]), judge(text_states[i])
  local status = 0
  if a == 1 or (id ~= '' and taken_id[id]) then
    status = 1
  elseif b == 1 or taken_text[text] then
    status = 2
  elseif a == 3 or b == 3 then
    status = 3
  else
    if id ~= '' then
      taken_id[id] = true
      id_pairs[#id_pairs + 1] = id
      id_pairs[#id_pairs + 1] = value
    end
    taken_text[text] = true
    text_pairs[#text_pairs + 1] = text
    text_pairs[#text_pairs + 1] = value
  end
  out[i] = status
end
store(idp, id_w, id_w * n, id_pairs)
store(textp, text_w, text_w * n, text_pairs)
return table.concat(out)
"""
)

_CONFIRM = (
    _HEAD
    + """
local id_pairs, text_pairs = {}, {}
for i = 1, #texts do
  if ids[i] ~= '' then
    id_pairs[#id_pairs + 1] = ids[i]
    id_pairs[#id_pairs + 1] = 'd'
  end
  text_pairs[#text_pairs + 1] = texts[i]
  text_pairs[#text_pairs + 1] = 'd'
end
store(idp, id_w, id_w * n, id_pairs)
store(textp, text_w, text_w * n, text_pairs)
return #texts
"""
)

# Extra ARGV: token. Leases this process still holds go back (shutdown path only).
_RELEASE = (
    _HEAD
    + """
local released = 0
local function release(prefix, width, list)
  local b = math.floor(now / width)
  for i = 1, #list do
    if list[i] ~= '' then
      for k = b - n, b do
        local v = redis.call('HGET', prefix .. k, list[i])
        if v and string.match(v, '^(.*)|') == ARGV[7] then
          redis.call('HDEL', prefix .. k, list[i])
          released = released + 1
        end
      end
    end
  end
end
release(idp, id_w, ids)
release(textp, text_w, texts)
return released
"""
)


class Verdict(IntEnum):
    NEW = 0  # reserved by us: publish it
    DUPLICATE_ID = 1
    DUPLICATE_TEXT = 2
    BUSY = 3  # another instance is publishing it right now: ask again later


DedupKey = tuple[str | None, str]  # (source doc id or None, content hash), both hex
_VERDICTS = {ord(str(int(v))): v for v in Verdict}


def random_instance_id() -> str:
    return uuid.uuid4().hex[:12]


def _chunks(docs: Sequence[DedupKey]) -> list[Sequence[DedupKey]]:
    return [docs[i : i + MAX_DOCS_PER_CALL] for i in range(0, len(docs), MAX_DOCS_PER_CALL)]


class Deduplicator:
    """The Redis side of deduplication for one process (one lease token)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str,
        instance_id: str,
        lease_s: float,
        id_ttl_s: float,
        window_s: float,
    ) -> None:
        self._client = client
        self.instance_id = instance_id
        instance_prefix = f"p:{instance_id}:"
        # A new token per process life: a restarted instance recognises its earlier
        # leases by the prefix and takes them over, but never confuses them with
        # documents it has in flight now.
        self._token = f"{instance_prefix}{uuid.uuid4().hex[:8]}"
        self._head = [
            f"{key_prefix}ingest:id:",
            f"{key_prefix}ingest:text:",
            "",  # the documents go here
            str(max(1, int(id_ttl_s * 1000) // BUCKETS)),
            str(max(1, int(window_s * 1000) // BUCKETS)),
            str(BUCKETS),
        ]
        self._reserve_args = [self._token, instance_prefix, str(max(1, int(lease_s * 1000)))]
        self._reserve: Any = client.register_script(_RESERVE)
        self._confirm: Any = client.register_script(_CONFIRM)
        self._release: Any = client.register_script(_RELEASE)

    def _args(self, docs: Sequence[DedupKey], extra: list[str]) -> list[str]:
        args = list(self._head)
        args[2] = "".join([f"{doc_id or ''} {content}\n" for doc_id, content in docs])
        return args + extra

    def reserve(self, docs: Sequence[DedupKey]) -> list[Verdict]:
        """A verdict per document, in order; one round trip per thousand documents."""
        verdicts: list[Verdict] = []
        for chunk in _chunks(docs):
            raw: bytes = self._reserve(keys=[], args=self._args(chunk, self._reserve_args))
            if len(raw) != len(chunk):
                raise RuntimeError(f"dedup gave {len(raw)} verdicts for {len(chunk)} documents")
            verdicts.extend(_VERDICTS[v] for v in raw)
        return verdicts

    def confirm(self, docs: Sequence[DedupKey]) -> None:
        """Mark published documents as seen (call only after Kafka acknowledged them)."""
        for chunk in _chunks(docs):
            self._confirm(keys=[], args=self._args(chunk, []))

    def release(self, docs: Sequence[DedupKey]) -> int:
        """Give back leases of documents that will not be published by this process."""
        released = 0
        for chunk in _chunks(docs):
            released += int(self._release(keys=[], args=self._args(chunk, [self._token])))
        return released
