//! Recognising and undoing the compressions layer blobs come in.

use std::io::{BufRead, BufReader, Read};

use super::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Looks at the first bytes of `reader` without consuming them.
pub fn sniff<R: BufRead>(reader: &mut R) -> std::io::Result<Compression> {
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}

/// The uncompressed stream of `reader`, whatever its compression.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> Result<Box<dyn Read + 'a>, StoreError> {
    let mut buffered = BufReader::with_capacity(1 << 16, reader);
    Ok(match sniff(&mut buffered)? {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(
            zstd::Decoder::with_buffer(buffered)
                .map_err(|e| StoreError::Invalid(format!("zstd: {e}")))?,
        ),
    })
}
