//! TFRecord framing, as TensorFlow writes it (`tf.io.TFRecordWriter`) and TF Serving reads warmup
//! files: each record is
//!
//! ```text
//! u64 length (little-endian) | u32 masked CRC32C of those 8 bytes | data | u32 masked CRC32C of data
//! ```
//!
//! where masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8. Both checksums are verified.
use bytes::Bytes;

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of TFRecord files.
pub fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8))
}

/// The checksum as stored in a TFRecord file.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends one framed record to `out`.
pub fn write_record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
}

/// Splits a TFRecord file into its records (slices of `file`, no copy), verifying both checksums
/// of each. Reads at most `max` records: a file with more is refused. Errors name the record
/// (counting from 1).
pub fn read_records(file: &Bytes, max: usize) -> Result<Vec<Bytes>, RecordError> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < file.len() {
        let n = records.len() + 1;
        if n > max {
            return Err(RecordError::TooMany { max });
        }
        let err = |message: String| RecordError::Corrupt { record: n, message };
        let rest = &file[at..];
        if rest.len() < 12 {
            return Err(err(format!("truncated: the file ends {} byte(s) into the 12-byte record header", rest.len())));
        }
        let (len_bytes, crc_bytes) = (&rest[..8], &rest[8..12]);
        let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        let computed = masked_crc32c(len_bytes);
        if stored != computed {
            return Err(err(format!(
                "corrupt length field: its masked CRC32C is {stored:#010x} in the file, {computed:#010x} computed"
            )));
        }
        let len = u64::from_le_bytes([
            len_bytes[0],
            len_bytes[1],
            len_bytes[2],
            len_bytes[3],
            len_bytes[4],
            len_bytes[5],
            len_bytes[6],
            len_bytes[7],
        ]);
        let available = rest.len() - 12;
        let data_len = match usize::try_from(len) {
            Ok(l) if l.checked_add(4).is_some_and(|t| t <= available) => l,
            _ => {
                return Err(err(format!(
                    "truncated: the header announces {len} byte(s) of data plus a 4-byte checksum, \
                     {available} byte(s) remain in the file"
                )))
            }
        };
        let data = &rest[12..12 + data_len];
        let c = &rest[12 + data_len..16 + data_len];
        let stored = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let computed = masked_crc32c(data);
        if stored != computed {
            return Err(err(format!(
                "corrupt data: its masked CRC32C is {stored:#010x} in the file, {computed:#010x} computed"
            )));
        }
        records.push(file.slice(at + 12..at + 12 + data_len));
        at += 16 + data_len;
    }
    Ok(records)
}

/// Why a TFRecord file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Record `record` (from 1) is truncated or fails its checksum.
    Corrupt { record: usize, message: String },
    /// The file has more than `max` records.
    TooMany { max: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        // RFC 3720 B.4 and the usual "123456789" check value.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&inc), 0x46dd_794e);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn masked_crc() {
        // The same values as examples/make_warmup_file.py computes.
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
        assert_eq!(masked_crc32c(&[0u8; 8]), 0x0798_0329);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }

    fn file(records: &[&[u8]]) -> Bytes {
        let mut out = Vec::new();
        for r in records {
            write_record(&mut out, r);
        }
        Bytes::from(out)
    }

    #[test]
    fn round_trip() {
        let f = file(&[b"one", b"", b"three"]);
        let r = read_records(&f, 1000).unwrap();
        assert_eq!(r, vec![Bytes::from_static(b"one"), Bytes::new(), Bytes::from_static(b"three")]);
        assert_eq!(read_records(&Bytes::new(), 1000).unwrap(), Vec::<Bytes>::new());
    }

    #[test]
    fn too_many_records() {
        let f = file(&[b"a", b"b", b"c"]);
        assert_eq!(read_records(&f, 3).unwrap().len(), 3);
        assert_eq!(read_records(&f, 2), Err(RecordError::TooMany { max: 2 }));
    }

    #[test]
    fn corruption_names_the_record() {
        let good = file(&[b"first", b"second"]);
        // a flipped data byte in record 2
        let mut bad = good.to_vec();
        let at = 16 + 5 + 12;
        bad[at] ^= 1;
        match read_records(&Bytes::from(bad), 1000) {
            Err(RecordError::Corrupt { record: 2, message }) => {
                assert!(message.starts_with("corrupt data: its masked CRC32C is "), "{message}")
            }
            other => panic!("{other:?}"),
        }
        // a flipped length byte in record 1
        let mut bad = good.to_vec();
        bad[0] ^= 0x80;
        match read_records(&Bytes::from(bad), 1000) {
            Err(RecordError::Corrupt { record: 1, message }) => {
                assert!(message.starts_with("corrupt length field"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        // cut in the middle of record 2's data, and in its header
        let cut = good.slice(..good.len() - 3);
        match read_records(&cut, 1000) {
            Err(RecordError::Corrupt { record: 2, message }) => assert_eq!(
                message,
                "truncated: the header announces 6 byte(s) of data plus a 4-byte checksum, 7 byte(s) remain in the file"
            ),
            other => panic!("{other:?}"),
        }
        let cut = good.slice(..16 + 5 + 4);
        assert_eq!(
            read_records(&cut, 1000),
            Err(RecordError::Corrupt {
                record: 2,
                message: "truncated: the file ends 4 byte(s) into the 12-byte record header".into()
            })
        );
    }

    #[test]
    fn a_huge_announced_length_is_refused_without_allocating() {
        let len = u64::MAX.to_le_bytes();
        let mut f = len.to_vec();
        f.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        f.extend_from_slice(b"xxxx");
        match read_records(&Bytes::from(f), 1000) {
            Err(RecordError::Corrupt { record: 1, message }) => {
                assert!(message.starts_with("truncated: the header announces 18446744073709551615 byte(s)"))
            }
            other => panic!("{other:?}"),
        }
    }
}
