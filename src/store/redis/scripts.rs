//! The Lua scripts of [`RedisStore`](super::RedisStore), the fields and
//! limits they work with, and the conversions between Redis replies and the
//! store's types.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::store::StoredToken;

/// The longest time to live or backoff written, about a century: Redis
/// refuses expiry times that overflow, and Lua numbers are exact below 2^53.
pub(super) const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// The fields of the token's hash.
pub(super) const FIELDS: [&str; 4] = ["iat", "exp", "fp", "v"];

/// `save`: KEYS[1] the token's hash; ARGV the new `iat`, `exp`, `fp`, `v`
/// and the time to live in milliseconds. Writes unless the stored entry is
/// one [`RedisStore::load`] would read (both numbers decimal `u64`, `fp`
/// UTF-8, `v` present) and was issued at the same time or later; an entry
/// `load` reads as a miss is replaced. Numbers are compared as decimal
/// strings, digit by digit, so the whole `u64` range compares exactly (Lua
/// numbers are doubles).
///
/// [`RedisStore::load`]: super::RedisStore#method.load
const SAVE_LUA: &str = r"
local function at_least(a, b)
  if #a ~= #b then return #a > #b end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return true
end
local function decimal(value)
  if not value then return nil end
  local digits = string.match(value, '^0*(%d+)$')
  if digits and at_least('18446744073709551615', digits) then return digits end
  return nil
end
local function utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    local len, lo, hi = 1, 0x80, 0xBF
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then len = 3
    elseif c >= 0xF0 and c <= 0xF4 then len = 4
    else return false end
    if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F
    elseif c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    if i + len - 1 > n then return false end
    for j = i + 1, i + len - 1 do
      local d = string.byte(s, j)
      if d < lo or d > hi then return false end
      lo, hi = 0x80, 0xBF
    end
    i = i + len
  end
  return true
end
local stored = redis.call('HMGET', KEYS[1], 'iat', 'exp', 'fp', 'v')
local iat = decimal(stored[1])
if iat and decimal(stored[2]) and stored[3] and utf8(stored[3]) and stored[4]
    and at_least(iat, ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'iat', ARGV[1], 'exp', ARGV[2], 'fp', ARGV[3], 'v', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

/// `remove`: KEYS[1] the token's hash; ARGV[1] the fingerprint. Deletes the
/// entry only if it holds that fingerprint.
const REMOVE_LUA: &str = r"
if redis.call('HGET', KEYS[1], 'fp') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// `unlock`: KEYS[1] the lock; ARGV[1] the owner. Deletes the lock only if
/// that owner holds it.
const UNLOCK_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// `renew_lock`: KEYS[1] the lock; ARGV[1] the owner, ARGV[2] the new time
/// to live in milliseconds. Extends the lock only if that owner holds it.
const RENEW_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// `back_off`: KEYS[1] the backoff key; ARGV[1] the duration in
/// milliseconds, ARGV[2] the cause (the key's value). Sets it unless it
/// already has at least that long to live,
/// so a backoff is never shortened; a key without expiry (never written by
/// this store) is given one rather than blocking the fleet forever. PTTL
/// and SET are in every Redis since 2.6, unlike `SET … GT` (none) or
/// `PEXPIRE … GT` (7.0).
const BACK_OFF_LUA: &str = r"
local remaining = redis.call('PTTL', KEYS[1])
if remaining >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
return 1
";

pub(super) static SAVE: LazyLock<Script> = LazyLock::new(|| Script::new(SAVE_LUA));
pub(super) static REMOVE: LazyLock<Script> = LazyLock::new(|| Script::new(REMOVE_LUA));
pub(super) static UNLOCK: LazyLock<Script> = LazyLock::new(|| Script::new(UNLOCK_LUA));
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_LUA));
pub(super) static BACK_OFF: LazyLock<Script> = LazyLock::new(|| Script::new(BACK_OFF_LUA));

/// A duration in whole milliseconds for `PX`/`PEXPIRE`: `None` for zero,
/// at least 1 otherwise, at most [`MAX_TTL_MS`].
pub(super) fn millis(duration: Duration) -> Option<u64> {
    if duration.is_zero() {
        return None;
    }
    let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    Some(ms.clamp(1, MAX_TTL_MS))
}

/// The token in the fields `iat`, `exp`, `fp`, `v` of its hash; `None` if
/// one is missing or malformed.
pub(super) fn parse_token(fields: Vec<Option<Vec<u8>>>) -> Option<StoredToken> {
    let mut fields = fields.into_iter();
    let mut next = || fields.next().flatten();
    let number = |bytes: Vec<u8>| -> Option<u64> {
        if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(&bytes).ok()?.parse().ok()
    };
    let issued_at_ms = number(next()?)?;
    let expires_at_ms = number(next()?)?;
    let fingerprint = String::from_utf8(next()?).ok()?;
    let sealed = next()?;
    Some(StoredToken {
        issued_at_ms,
        expires_at_ms,
        fingerprint,
        sealed,
    })
}
