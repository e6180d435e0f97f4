//! Reading a connection's first bytes until a parser has all it needs (the
//! XMPP stream header, a TLS ClientHello), bounded in size and time, with
//! every byte kept for the upstream.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Why [`read`] stopped without a complete prefix.
pub(crate) enum Stop<E> {
    /// The parser refused the bytes.
    Parse(E),
    /// Nothing complete within the time allowed.
    Timeout,
    /// The peer closed, or the read failed, first.
    Closed,
}

/// Reads from `r` into `buf` (which may hold bytes already read, such as
/// what followed a PROXY header) until `parse` finds a complete prefix,
/// never past `max` bytes and for at most `limit`. `parse` answers
/// `Ok(None)` while more bytes are needed, and must refuse a buffer of
/// `max` bytes that is still incomplete.
pub(crate) async fn read<R, T, E>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
    limit: Duration,
    mut parse: impl FnMut(&[u8]) -> Result<Option<T>, E>,
) -> Result<T, Stop<E>>
where
    R: AsyncRead + Unpin,
{
    let work = async {
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(t) = parse(buf).map_err(Stop::Parse)? {
                return Ok(t);
            }
            // Never past the bound: the last read is cut to what is left.
            let room = max.saturating_sub(buf.len()).min(chunk.len());
            let n = r.read(&mut chunk[..room]).await.map_err(|_| Stop::Closed)?;
            if n == 0 {
                return Err(Stop::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(Stop::Timeout))
}
