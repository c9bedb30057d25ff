//! Replies of a [`super::DirectConnection`], and the RESP2 frames it writes and reads, encoded and
//! decoded by `redis-protocol` (the codec fred uses).

use fred::bytes::{Bytes, BytesMut};
use fred::error::{Error as FredError, ErrorKind};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::encode::extend_encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, BytesFrame};

use crate::error::{RedisError, Result};

/// One reply, as RESP2 has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK` and the like.
    Status(Bytes),
    /// `-ERR ...`: the command failed; the text starts with the error code.
    Error(String),
    Integer(i64),
    /// A bulk string; `None` for RESP2's null (a missing key; a null array reads the same).
    Bulk(Option<Bytes>),
    Array(Vec<Reply>),
}

impl From<BytesFrame> for Reply {
    fn from(frame: BytesFrame) -> Self {
        match frame {
            BytesFrame::SimpleString(text) => Reply::Status(text),
            BytesFrame::Error(text) => Reply::Error(text.to_string()),
            BytesFrame::Integer(value) => Reply::Integer(value),
            BytesFrame::BulkString(value) => Reply::Bulk(Some(value)),
            BytesFrame::Array(items) => Reply::Array(items.into_iter().map(Reply::from).collect()),
            BytesFrame::Null => Reply::Bulk(None),
        }
    }
}

impl Reply {
    /// The reply as an error when it is one.
    pub fn into_result(self) -> Result<Reply> {
        match self {
            Reply::Error(text) => {
                Err(RedisError::Command(FredError::new(ErrorKind::Unknown, text)))
            }
            other => Ok(other),
        }
    }

    /// An array of integers (what the rate-limit scripts return) as numbers.
    pub fn into_integers(self) -> Result<Vec<i64>> {
        let unexpected =
            |reply: &Reply| RedisError::Unexpected(format!("expected integers, got {reply:?}"));
        match self.into_result()? {
            Reply::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Reply::Integer(value) => Ok(value),
                    other => Err(unexpected(&other)),
                })
                .collect(),
            other => Err(unexpected(&other)),
        }
    }
}

/// Appends one command (an array of bulk strings).
pub(super) fn encode(out: &mut BytesMut, args: &[&[u8]]) -> Result<(), FredError> {
    let args: Vec<BorrowedFrame<'_>> =
        args.iter().map(|arg| BorrowedFrame::BulkString(arg)).collect();
    extend_encode_borrowed(out, &BorrowedFrame::Array(&args), false)
        .map(drop)
        .map_err(|error| FredError::new(ErrorKind::Protocol, error.details().to_owned()))
}

/// Takes one complete reply off the front of `input`, `None` while it is incomplete.
pub(super) fn parse(input: &mut BytesMut) -> Result<Option<Reply>, FredError> {
    match decode_bytes_mut(input) {
        Ok(frame) => Ok(frame.map(|(frame, _, _)| Reply::from(frame))),
        Err(error) => Err(FredError::new(ErrorKind::Protocol, error.details().to_owned())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Vec<Reply> {
        let mut input = BytesMut::from(bytes);
        let mut replies = Vec::new();
        while let Some(reply) = parse(&mut input).unwrap() {
            replies.push(reply);
        }
        assert!(input.is_empty(), "bytes left after the last complete reply");
        replies
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = BytesMut::new();
        encode(&mut out, &[b"GET", b"a key"]).unwrap();
        encode(&mut out, &[b"PEXPIRE", b"k", b"1800000"]).unwrap();
        assert_eq!(
            &out[..],
            b"*2\r\n$3\r\nGET\r\n$5\r\na key\r\n*3\r\n$7\r\nPEXPIRE\r\n$1\r\nk\r\n$7\r\n1800000\r\n"
        );
    }

    #[test]
    fn every_reply_type_parses_and_bulk_strings_may_hold_line_breaks() {
        let replies = parse_all(
            b"+OK\r\n-WRONGTYPE Operation against a key\r\n:-42\r\n$4\r\na\r\nb\r\n$-1\r\n$0\r\n\r\n*2\r\n:1\r\n*1\r\n$1\r\nx\r\n*-1\r\n",
        );
        assert_eq!(
            replies,
            vec![
                Reply::Status(Bytes::from_static(b"OK")),
                Reply::Error("WRONGTYPE Operation against a key".into()),
                Reply::Integer(-42),
                Reply::Bulk(Some(Bytes::from_static(b"a\r\nb"))),
                Reply::Bulk(None),
                Reply::Bulk(Some(Bytes::new())),
                Reply::Array(vec![
                    Reply::Integer(1),
                    Reply::Array(vec![Reply::Bulk(Some(Bytes::from_static(b"x")))]),
                ]),
                Reply::Bulk(None),
            ]
        );
    }

    #[test]
    fn an_incomplete_reply_waits_for_its_last_byte() {
        let whole: &[u8] = b"*2\r\n$5\r\nhello\r\n:7\r\n";
        for cut in 0..whole.len() {
            let mut input = BytesMut::from(&whole[..cut]);
            assert_eq!(parse(&mut input).unwrap(), None, "parsed a reply cut at {cut}");
            assert_eq!(input.len(), cut, "consumed bytes of an incomplete reply");
        }
        assert_eq!(parse_all(whole).len(), 1);
    }

    #[test]
    fn a_corrupt_stream_is_an_error_not_a_panic() {
        for bad in [&b"?what\r\n"[..], b"$abc\r\n", b"$-5\r\n", b":12x\r\n", b"\r\n"] {
            assert!(parse(&mut BytesMut::from(bad)).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn an_error_reply_is_a_command_error_that_does_not_mean_unavailable() {
        let error = Reply::Error("WRONGTYPE Operation against a key".into()).into_result();
        assert!(matches!(&error, Err(e) if !e.is_unavailable()));
        let busy = Reply::Error("LOADING Redis is loading the dataset".into()).into_result();
        assert!(matches!(&busy, Err(e) if e.is_unavailable()));
    }
}
