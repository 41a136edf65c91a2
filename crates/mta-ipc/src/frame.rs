//! The frame codec: `u32` big-endian length, then a bincode payload. The only place that
//! encodes or decodes bincode, so a move to another format is this one file.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted. Content never travels through sockets, so frames are records
/// and replies; a claim of a few hundred records stays well below this.
pub const MAX_FRAME: u32 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME} bytes")]
    TooLarge { len: u32 },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_FRAME as u64)
        .reject_trailing_bytes()
}

/// The payload alone, without the length prefix: how the store keeps records on disk, so
/// that records and frames share one encoding.
pub fn encode_payload<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    options()
        .serialize(value)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let payload = encode_payload(value)?;
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge { len: u32::MAX })?;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    options()
        .deserialize(payload)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

pub async fn write_frame<W, T>(w: &mut W, value: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = encode(value)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame. `Ok(None)` is a clean end of stream at a frame boundary.
pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len_buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len_buf[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len_buf);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        })?;
    decode(&payload).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Sample {
        A(u32),
        B { s: String },
    }

    #[tokio::test]
    async fn round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, &Sample::B { s: "hi".into() })
            .await
            .unwrap();
        write_frame(&mut a, &Sample::A(7)).await.unwrap();
        drop(a);
        assert_eq!(
            read_frame::<_, Sample>(&mut b).await.unwrap(),
            Some(Sample::B { s: "hi".into() })
        );
        assert_eq!(
            read_frame::<_, Sample>(&mut b).await.unwrap(),
            Some(Sample::A(7))
        );
        assert_eq!(read_frame::<_, Sample>(&mut b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn truncated_and_oversized_frames_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame::<_, Sample>(&mut b).await,
            Err(FrameError::Truncated)
        ));

        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&(MAX_FRAME + 1).to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_frame::<_, Sample>(&mut b).await,
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&Sample::A(1)).unwrap();
        bytes.push(0);
        assert!(decode::<Sample>(&bytes[4..]).is_err());
    }
}
