"""Publish-once across restarts and instances: two-phase reservations in Redis.

Each document is known by two marks: its id (when the channel gave one) and a
fingerprint of (source, normalised text). A document is published only by the
instance that holds a lease on both, and a mark says "seen" only once Kafka has
acknowledged the document:

1. ``reserve``: for every document whose marks are free, write a lease (the
   reservation's name: this process's token and a sequence number, and an expiry),
   atomically for a whole batch, in one Lua call. Asked again under the same name
   (its reply was lost), a reservation finds its own leases free, not in flight.
2. Publish what was reserved; wait for the broker's acknowledgement.
3. ``confirm``: say so. When every document a reservation leased was published (the
   common case), one "done" mark for the reservation says it for all of them, and
   their leases count as "seen" from then on, expired or not. Otherwise each
   published document gets its own "done" marks.

A process that dies between 1 and 3 leaves leases, not "done" marks, so nothing is
lost: its documents are re-read (file checkpoints never passed them) and published
by whoever takes the lease next. Its own restart takes them over at once (leases
carry the instance id); another instance waits for the lease to expire. A document
leased by a live instance elsewhere is *busy*: the caller asks again later, it is
never dropped.

Storage: marks are fields of hashes bucketed by time (``<prefix>ingest:id:<n>`` for
ids, ``...:text:<n>`` for texts, ``...:done:<n>`` for confirmed reservations), each
bucket expiring as a whole. One HMGET per bucket and one HSET per batch replace
thousands of per-key SET/PX calls, which cost Redis several microseconds each. A
mark lives for its TTL (the id TTL, or the text window) plus at most one bucket
width (TTL / BUCKETS); a reservation's mark lives for the longer of the two TTLs,
so every lease that names it counts as seen for at least its own TTL. All keys of a
batch are touched by one script, so the marks need one Redis, not a cluster.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from enum import IntEnum
from typing import Any, NamedTuple

import redis

BUCKETS = 2  # buckets per TTL: the mark outlives its TTL by at most TTL / BUCKETS
MAX_DOCS_PER_CALL = 1000  # keeps Lua's unpack() well inside its stack limit

# Shared head of the scripts. ARGV: id prefix, text prefix, docs ("<id> <text>\n"
# each, id empty when the channel gave none), id bucket ms, text bucket ms, buckets,
# reservation prefix, reservation bucket ms.
# Parsed into texts[i], ids[i] (false when none), and the ids present with their
# positions (id_fields, id_at), which is what HMGET and HSET take.
_HEAD = """
local idp, textp = ARGV[1], ARGV[2]
local id_w, text_w, n = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local donep, done_w = ARGV[7], tonumber(ARGV[8])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids, texts, id_fields, id_at = {}, {}, {}, {}
local count, n_ids = 0, 0
-- Plain finds and subs: a pattern match per document costs twice as much.
local docs, pos, find, sub = ARGV[3], 1, string.find, string.sub
while pos <= #docs do
  local space = find(docs, ' ', pos, true)
  local eol = find(docs, '\\n', space + 1, true)
  count = count + 1
  texts[count] = sub(docs, space + 1, eol - 1)
  if space == pos then
    ids[count] = false
  else
    local id = sub(docs, pos, space - 1)
    ids[count] = id
    n_ids = n_ids + 1
    id_fields[n_ids] = id
    id_at[n_ids] = count
  end
  pos = eol + 1
end
-- Write field/value pairs into the current bucket of a space, and let the bucket
-- expire once its newest possible mark is older than the TTL.
local function store(prefix, width, ttl, kv)
  if #kv == 0 then return end
  local b = math.floor(now / width)
  redis.call('HSET', prefix .. b, unpack(kv))
  redis.call('PEXPIRE', prefix .. b, (b + 1) * width + ttl - now + 1000)
end
-- Whether a lease value names a reservation confirmed as a whole (looked up once per
-- reservation per call).
local confirmed = {}
local function done(v)
  local owner = string.match(v, '^(.*)|')
  if not owner then return false end
  local found = confirmed[owner]
  if found == nil then
    found = false
    local b = math.floor(now / done_w)
    for k = b - n, b do
      if redis.call('HEXISTS', donep .. k, owner) == 1 then
        found = true
        break
      end
    end
    confirmed[owner] = found
  end
  return found
end
"""

# Extra ARGV: reservation, instance prefix, lease ms. Verdict digits, one per document.
_RESERVE = (
    _HEAD
    + """
local reservation, mine, lease = ARGV[9], ARGV[10], tonumber(ARGV[11])
-- This process's token: the reservation's name up to its sequence number.
local ours = string.match(reservation, '^(.*:)')
-- The state of each document's mark over the live buckets: 'd' if seen (a "done"
-- mark, or a lease of a confirmed reservation), else the live lease of the latest
-- bucket, else nil. at[j] is the document of fields[j] (the identity when at is nil).
local function states(prefix, width, fields, at)
  local out = {}
  if #fields == 0 then return out end
  local b = math.floor(now / width)
  for k = b - n, b do
    local vals = redis.call('HMGET', prefix .. k, unpack(fields))
    for j = 1, #fields do
      local v = vals[j]
      if v then
        local i = at and at[j] or j
        if out[i] ~= 'd' then
          if v == 'd' or done(v) then
            out[i] = 'd'
          elseif (tonumber(string.match(v, '|(%d+)$')) or 0) > now then
            out[i] = v
          end
        end
      end
    end
  end
  return out
end
-- 1: a duplicate (seen, or in flight in this very process under another
-- reservation); 3: leased by another live instance; 0: free, leased by an earlier
-- life of this instance, or by this very reservation: it is being asked again
-- because its answer was lost (Redis ran it, the reply never arrived), and what it
-- leased then is still its own to publish.
local function judge(v)
  if not v then return 0 end
  if v == 'd' then return 1 end
  local owner = string.match(v, '^(.*)|') or ''
  if owner == reservation then return 0 end
  if string.sub(owner, 1, #ours) == ours then return 1 end
  if string.sub(owner, 1, #mine) == mine then return 0 end
  return 3
end
local id_states = states(idp, id_w, id_fields, id_at)
local text_states = states(textp, text_w, texts, nil)
local value = reservation .. '|' .. (now + lease)
local taken_id, taken_text = {}, {}
local id_pairs, text_pairs, out = {}, {}, {}
-- Strings, not numbers: table.concat would format each number with sprintf.
local digits = {[0] = '0', '1', '2', '3'}
local n_id_pairs, n_text_pairs = 0, 0
for i = 1, count do
  local id, text = ids[i], texts[i]
  local status = 0
  -- Most documents are new: no mark, and not repeated within the batch.
  if id_states[i] or text_states[i] or taken_text[text] or (id and taken_id[id]) then
    local a, b = judge(id_states[i]), judge(text_states[i])
    if a == 1 or (id and taken_id[id]) then
      status = 1
    elseif b == 1 or taken_text[text] then
      status = 2
    elseif a == 3 or b == 3 then
      status = 3
    end
  end
  if status == 0 then
    if id then
      taken_id[id] = true
      id_pairs[n_id_pairs + 1] = id
      id_pairs[n_id_pairs + 2] = value
      n_id_pairs = n_id_pairs + 2
    end
    taken_text[text] = true
    text_pairs[n_text_pairs + 1] = text
    text_pairs[n_text_pairs + 2] = value
    n_text_pairs = n_text_pairs + 2
  end
  out[i] = digits[status]
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
for j = 1, n_ids do
  id_pairs[2 * j - 1] = id_fields[j]
  id_pairs[2 * j] = 'd'
end
for i = 1, count do
  text_pairs[2 * i - 1] = texts[i]
  text_pairs[2 * i] = 'd'
end
store(idp, id_w, id_w * n, id_pairs)
store(textp, text_w, text_w * n, text_pairs)
-- Extra ARGV: reservations whose every leased document was published.
local done_pairs = {}
for r = 9, #ARGV do
  done_pairs[#done_pairs + 1] = ARGV[r]
  done_pairs[#done_pairs + 1] = 'd'
end
store(donep, done_w, done_w * n, done_pairs)
return count
"""
)

# Extra ARGV: this process's token and ":". Leases this process still holds, of
# reservations not confirmed, go back (shutdown path only).
_RELEASE = (
    _HEAD
    + """
local ours = ARGV[9]
local released = 0
local function release(prefix, width, list)
  local b = math.floor(now / width)
  for i = 1, #list do
    for k = b - n, b do
      local v = redis.call('HGET', prefix .. k, list[i])
      local owner = v and string.match(v, '^(.*)|')
      if owner and string.sub(owner, 1, #ours) == ours and not done(v) then
        redis.call('HDEL', prefix .. k, list[i])
        released = released + 1
      end
    end
  end
end
release(idp, id_w, id_fields)
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


class Reservation(NamedTuple):
    verdicts: list[Verdict]
    names: list[str]


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
        self._token = f"{instance_prefix}{uuid.uuid4().hex[:8]}:"
        self._reservations = itertools.count(1)
        id_width = max(1, int(id_ttl_s * 1000) // BUCKETS)
        text_width = max(1, int(window_s * 1000) // BUCKETS)
        self._head = [
            f"{key_prefix}ingest:id:",
            f"{key_prefix}ingest:text:",
            "",  # the documents go here
            str(id_width),
            str(text_width),
            str(BUCKETS),
            f"{key_prefix}ingest:done:",
            str(max(id_width, text_width)),
        ]
        self._reserve_extra = [instance_prefix, str(max(1, int(lease_s * 1000)))]
        self._reserve: Any = client.register_script(_RESERVE)
        self._confirm: Any = client.register_script(_CONFIRM)
        self._release: Any = client.register_script(_RELEASE)

    def _args(self, docs: Sequence[DedupKey], extra: list[str]) -> list[str]:
        args = list(self._head)
        args[2] = "".join([f"{doc_id or ''} {content}\n" for doc_id, content in docs])
        return args + extra

    def reserve(self, docs: Sequence[DedupKey]) -> list[Verdict]:
        """A verdict per document, in order; one round trip per thousand documents."""
        return self.reserve_named(docs).verdicts

    def reserve_named(self, docs: Sequence[DedupKey]) -> Reservation:
        """``reserve``, also naming the reservations (one per thousand documents) that
        leased the NEW documents, for ``confirm`` to confirm them as a whole."""
        return self.reserve_many([docs])[0]

    def name_reservations(self, n_docs: int) -> list[str]:
        """Fresh names for the reservations of a group of ``n_docs`` documents (one
        per thousand), for ``reserve_many``. A caller that keeps them and asks about the
        same group again under them, after Redis gave no answer, is recognised as the
        owner of whatever that unanswered call may have leased."""
        n_chunks = -(-n_docs // MAX_DOCS_PER_CALL)
        return [f"{self._token}{next(self._reservations)}" for _ in range(n_chunks)]

    def reserve_many(
        self,
        groups: Sequence[Sequence[DedupKey]],
        names: Sequence[Sequence[str]] | None = None,
    ) -> list[Reservation]:
        """``reserve_named`` for several groups (batches) in one round trip: one script
        call per group (per thousand documents), pipelined, run by Redis in order.

        ``names`` gives each group's reservation names (``name_reservations``), fresh
        ones when omitted. Asking again under the same names is idempotent: after a
        RedisError the call may have run in Redis with only its reply lost, and under
        new names its own leases would read as documents in flight elsewhere in this
        process, that is as duplicates, and never be published."""
        calls: list[tuple[int, str, Sequence[DedupKey]]] = []
        for g, docs in enumerate(groups):
            chunks = _chunks(docs)
            given = self.name_reservations(len(docs)) if names is None else names[g]
            if len(given) != len(chunks):
                raise ValueError(f"{len(given)} reservation names for {len(chunks)} chunks")
            calls.extend((g, name, chunk) for name, chunk in zip(given, chunks, strict=True))
        answers = self._pipelined(
            self._reserve,
            [self._args(chunk, [name, *self._reserve_extra]) for _, name, chunk in calls],
        )
        out = [Reservation([], []) for _ in groups]
        for (g, name, chunk), raw in zip(calls, answers, strict=True):
            if not isinstance(raw, bytes) or len(raw) != len(chunk):
                raise RuntimeError(f"dedup gave {raw!r:.40} for {len(chunk)} documents")
            out[g].verdicts.extend(_VERDICTS[v] for v in raw)
            out[g].names.append(name)
        return out

    def _pipelined(self, script: Any, arg_lists: list[list[str]]) -> list[Any]:
        """Run a script once per argument list, in one round trip."""
        if not arg_lists:
            return []
        for attempt in (1, 2):
            pipe = self._client.pipeline(transaction=False)
            for args in arg_lists:
                pipe.evalsha(script.sha, 0, *args)
            try:
                return pipe.execute()
            except redis.exceptions.NoScriptError:
                # First use, or Redis restarted without its script cache: nothing ran.
                if attempt == 2:
                    raise
                self._client.script_load(script.script)
        raise AssertionError("unreachable")

    def confirm(self, docs: Sequence[DedupKey], reservations: Sequence[str] = ()) -> None:
        """Mark published documents as seen (call only after Kafka acknowledged them):
        ``docs`` one by one, and all documents of ``reservations`` at once (name only
        reservations whose every NEW document was published)."""
        extra = list(reservations)
        if not docs and not extra:
            return
        for chunk in _chunks(docs) or [docs]:
            self._confirm(keys=[], args=self._args(chunk, extra))
            extra = []

    def release(self, docs: Sequence[DedupKey]) -> int:
        """Give back leases of documents that will not be published by this process."""
        released = 0
        for chunk in _chunks(docs):
            released += int(self._release(keys=[], args=self._args(chunk, [self._token])))
        return released
