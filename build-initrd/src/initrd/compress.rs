//! Initramfs compression, in formats and settings the kernel's own decompressors accept.

use std::io::{self, Write};

/// zstd level 19 is what the kernel's build uses for its own compressed payloads.
const ZSTD_LEVEL: i32 = 19;
/// 2^23 = 8 MiB: the largest window the kernel's initramfs unzstd is documented to handle;
/// level 19 would choose it anyway, pinning it keeps a future zstd from changing that.
const ZSTD_WINDOW_LOG: u32 = 23;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    Zstd,
    Gzip,
    None,
}

/// Compresses `data` as one zstd frame or one gzip member. The output depends only on the
/// input: zstd runs single-threaded, gzip records mtime 0 and no file name.
pub fn compress(data: &[u8], compression: Compression) -> io::Result<Vec<u8>> {
    match compression {
        Compression::Zstd => zstd_frame(data),
        Compression::Gzip => gzip_member(data),
        Compression::None => Ok(data.to_vec()),
    }
}

fn zstd_frame(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
    compressor.set_parameter(zstd::zstd_safe::CParameter::WindowLog(ZSTD_WINDOW_LOG))?;
    // The kernel verifies the checksum, so a corrupted initramfs fails loudly.
    compressor.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    compressor.compress(data)
}

fn gzip_member(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(data)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|n| (n % 251).to_le_bytes())
            .collect()
    }

    /// More than 8 MiB, so the frame cannot be single-segment and must name its window.
    fn large_sample() -> Vec<u8> {
        (0..9 << 20).map(|n: u32| (n / 7 % 253) as u8).collect()
    }

    #[test]
    fn zstd_is_one_frame_with_an_8_mib_window_at_most() {
        let data = large_sample();
        let packed = compress(&data, Compression::Zstd).expect("compresses");
        assert!(packed.len() < data.len() / 10);
        let frame_size = zstd::zstd_safe::find_frame_compressed_size(&packed).expect("one frame");
        assert_eq!(frame_size, packed.len(), "exactly one frame");
        // A decoder limited to 2^23 refuses frames whose window descriptor asks for more.
        let mut decoder = zstd::stream::read::Decoder::new(packed.as_slice()).expect("decoder");
        decoder
            .window_log_max(ZSTD_WINDOW_LOG)
            .expect("limit accepted");
        let mut unpacked = Vec::new();
        decoder
            .read_to_end(&mut unpacked)
            .expect("fits in an 8 MiB window");
        assert_eq!(unpacked, data);
    }

    #[test]
    fn gzip_has_no_timestamp_and_round_trips() {
        let data = sample();
        let packed = compress(&data, Compression::Gzip).expect("compresses");
        assert_eq!(&packed[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(&packed[4..8], &[0, 0, 0, 0], "mtime 0");
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(packed.as_slice())
            .read_to_end(&mut unpacked)
            .expect("decodes");
        assert_eq!(unpacked, data);
    }

    #[test]
    fn every_format_is_deterministic() {
        let data = sample();
        for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
            let first = compress(&data, compression).expect("compresses");
            let second = compress(&data, compression).expect("compresses");
            assert_eq!(first, second, "{compression:?}");
        }
        assert_eq!(compress(&data, Compression::None).expect("copies"), data);
    }
}
