//! Little-endian arrays to and from snapshot files, streamed in chunks (a 400 MB array is never
//! held twice) with a CRC taken on the way, so a file is checked in the same pass that reads it.

use std::io::{self, Read, Write};

/// Bytes converted per step.
const CHUNK: usize = 1 << 16;

/// A plain value with a fixed little-endian encoding.
pub trait Le: Copy + Default {
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    fn get(bytes: &[u8]) -> Self;
}

macro_rules! le {
    ($($t:ty),*) => {$(
        impl Le for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("sized chunk"))
            }
        }
    )*};
}
le!(u8, i8, u32, u64, i64, f32);

/// Writes through, keeping a CRC and a count of what passed.
pub struct CrcWriter<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> CrcWriter<W> {
    pub fn new(inner: W) -> CrcWriter<W> {
        CrcWriter {
            inner,
            hasher: crc32fast::Hasher::new(),
            written: 0,
        }
    }

    /// The inner writer, the byte count and the CRC.
    pub fn finish(self) -> (W, u64, u32) {
        (self.inner, self.written, self.hasher.finalize())
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that knows how many bytes it has left, so an array can be allocated at its exact
/// size up front (no doubling while it grows) without trusting a count read from the file.
pub trait Bounded: Read {
    fn remaining(&self) -> u64;
}

impl Bounded for &[u8] {
    fn remaining(&self) -> u64 {
        self.len() as u64
    }
}

/// Reads through, keeping a CRC and a count of what passed.
pub struct CrcReader<R> {
    inner: R,
    hasher: crc32fast::Hasher,
    read: u64,
    len: u64,
}

impl<R: Read> Bounded for CrcReader<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.read)
    }
}

impl<R: Read> CrcReader<R> {
    /// `len`: how many bytes `inner` holds (a file's size).
    pub fn new(inner: R, len: u64) -> CrcReader<R> {
        CrcReader {
            inner,
            hasher: crc32fast::Hasher::new(),
            read: 0,
            len,
        }
    }

    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// The CRC of everything read so far.
    pub fn crc(&self) -> u32 {
        self.hasher.clone().finalize()
    }

    /// True when the inner reader has nothing left.
    pub fn at_end(&mut self) -> io::Result<bool> {
        let mut probe = [0u8; 1];
        Ok(self.inner.read(&mut probe)? == 0)
    }
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

pub fn write_u64(w: &mut impl Write, v: u64) -> io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

pub fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

pub fn write_slice<T: Le>(w: &mut impl Write, items: &[T]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(CHUNK);
    for chunk in items.chunks(CHUNK / T::SIZE) {
        buf.clear();
        chunk.iter().for_each(|x| x.put(&mut buf));
        w.write_all(&buf)?;
    }
    Ok(())
}

/// Reads `n` values into an array of exactly that size. A count larger than what the reader
/// has left fails before anything is allocated.
pub fn read_vec<T: Le>(r: &mut impl Bounded, n: usize) -> io::Result<Vec<T>> {
    let too_many = n
        .checked_mul(T::SIZE)
        .is_none_or(|bytes| bytes as u64 > r.remaining());
    if too_many {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "an array runs past the end of the file",
        ));
    }
    let per = CHUNK / T::SIZE;
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; CHUNK];
    let mut left = n;
    while left > 0 {
        let take = left.min(per);
        let bytes = &mut buf[..take * T::SIZE];
        r.read_exact(bytes)?;
        out.extend(bytes.chunks_exact(T::SIZE).map(T::get));
        left -= take;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_round_trip_with_matching_crcs() {
        let values: Vec<f32> = (0..100_000).map(|i| i as f32 * 0.5 - 7.0).collect();
        let codes: Vec<i8> = (0..70_001).map(|i| (i % 255 - 127) as i8).collect();
        let mut w = CrcWriter::new(Vec::new());
        write_u64(&mut w, 42).unwrap();
        write_slice(&mut w, &values).unwrap();
        write_slice(&mut w, &codes).unwrap();
        let (bytes, len, crc) = w.finish();
        assert_eq!(len as usize, bytes.len());
        assert_eq!(crc, crc32fast::hash(&bytes));
        let mut r = CrcReader::new(bytes.as_slice(), bytes.len() as u64);
        assert_eq!(read_u64(&mut r).unwrap(), 42);
        assert_eq!(read_vec::<f32>(&mut r, values.len()).unwrap(), values);
        assert_eq!(read_vec::<i8>(&mut r, codes.len()).unwrap(), codes);
        assert!(r.at_end().unwrap());
        assert_eq!(r.crc(), crc);
        let mut short = CrcReader::new(&bytes[..bytes.len() - 1], bytes.len() as u64 - 1);
        read_u64(&mut short).unwrap();
        assert!(
            read_vec::<f32>(&mut short, 1 << 40).is_err(),
            "a lying count fails at once"
        );
        assert!(
            read_vec::<f32>(&mut short, usize::MAX).is_err(),
            "even one that overflows"
        );
        let mut whole = bytes.as_slice();
        read_u64(&mut whole).unwrap();
        assert_eq!(read_vec::<f32>(&mut whole, values.len()).unwrap(), values);
    }
}
