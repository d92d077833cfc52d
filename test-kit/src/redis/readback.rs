//! Reading a [`RedisServer`] back and wiping it: [`RedisServer::dump`] and
//! [`RedisServer::flush_all`].

use std::io;

use redis::Value;

use super::server::RedisServer;

impl RedisServer {
    /// Removes every key (`FLUSHALL`).
    ///
    /// # Errors
    ///
    /// The server could not be reached or did not answer within 5 s.
    pub async fn flush_all(&self) -> io::Result<()> {
        let mut connection = self.connection().await?;
        redis::cmd("FLUSHALL")
            .exec_async(&mut connection)
            .await
            .map_err(|error| command_error("FLUSHALL", error))
    }

    /// Every key and what it holds, raw: for each key, its name and the
    /// concatenation of its contents (a string's value; each field name and
    /// value of a hash; the members of a list, set or sorted set, with
    /// scores; the entries of a stream; the `DUMP` serialization of
    /// anything else). Sorted by key name.
    ///
    /// For scanning byte by byte what a store left in Redis.
    ///
    /// # Errors
    ///
    /// The server could not be reached or did not answer within 5 s.
    pub async fn dump(&self) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut connection = self.connection().await?;
        let mut names: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut connection)
            .await
            .map_err(|error| command_error("KEYS", error))?;
        names.sort();
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let kind: String = redis::cmd("TYPE")
                .arg(&name)
                .query_async(&mut connection)
                .await
                .map_err(|error| command_error("TYPE", error))?;
            let mut read = match kind.as_str() {
                // Expired or removed since KEYS.
                "none" => continue,
                "string" => redis::cmd("GET"),
                "hash" => redis::cmd("HGETALL"),
                "list" => {
                    let mut command = redis::cmd("LRANGE");
                    command.arg(&name).arg(0).arg(-1);
                    command
                }
                "set" => redis::cmd("SMEMBERS"),
                "zset" => {
                    let mut command = redis::cmd("ZRANGE");
                    command.arg(&name).arg(0).arg(-1).arg("WITHSCORES");
                    command
                }
                "stream" => {
                    let mut command = redis::cmd("XRANGE");
                    command.arg(&name).arg("-").arg("+");
                    command
                }
                _ => redis::cmd("DUMP"),
            };
            if !matches!(kind.as_str(), "list" | "zset" | "stream") {
                read.arg(&name);
            }
            let value: Value = read
                .query_async(&mut connection)
                .await
                .map_err(|error| command_error(&kind, error))?;
            let mut contents = Vec::new();
            flatten(&value, &mut contents);
            entries.push((name, contents));
        }
        Ok(entries)
    }
}

fn command_error(command: &str, error: redis::RedisError) -> io::Error {
    io::Error::other(format!("the test redis-server failed {command}: {error}"))
}

/// Appends every string, number and element of `value` to `out`.
fn flatten(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Nil | Value::Okay | Value::ServerError(_) => {}
        Value::Int(number) => out.extend_from_slice(number.to_string().as_bytes()),
        Value::BulkString(bytes) => out.extend_from_slice(bytes),
        Value::SimpleString(text) => out.extend_from_slice(text.as_bytes()),
        Value::Array(items) | Value::Set(items) => {
            for item in items {
                flatten(item, out);
            }
        }
        Value::Map(pairs) => {
            for (key, item) in pairs {
                flatten(key, out);
                flatten(item, out);
            }
        }
        Value::Double(number) => out.extend_from_slice(number.to_string().as_bytes()),
        Value::Boolean(flag) => out.extend_from_slice(flag.to_string().as_bytes()),
        Value::VerbatimString { text, .. } => out.extend_from_slice(text.as_bytes()),
        Value::Attribute { data, .. } => flatten(data, out),
        Value::Push { data, .. } => {
            for item in data {
                flatten(item, out);
            }
        }
        // Big numbers (RESP3 only) are not in anything the harness reads.
        _ => {}
    }
}
