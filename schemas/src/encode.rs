//! A deterministic Avro binary encoder for `apache_avro::types::Value`.
//!
//! apache-avro writes map entries in `HashMap` iteration order, which differs from process to
//! process, so the same message would not always give the same bytes (nor the same compressed
//! size). This encoder writes map entries sorted by key; everything else follows the Avro
//! specification's binary encoding exactly, and decoding stays with apache-avro. Debug builds
//! (every test) also check each value against its schema before encoding.

use apache_avro::types::Value as Avro;

use crate::error::EncodeError;

pub(crate) fn long(v: i64, out: &mut Vec<u8>) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64; // zig-zag
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

pub(crate) fn len(n: usize, out: &mut Vec<u8>) {
    long(i64::try_from(n).unwrap_or(i64::MAX), out);
}

pub(crate) fn bytes(b: &[u8], out: &mut Vec<u8>) {
    len(b.len(), out);
    out.extend_from_slice(b);
}

/// Appends the Avro binary encoding of `v` to `out`.
pub(crate) fn encode(v: &Avro, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match v {
        Avro::Null => {}
        Avro::Boolean(b) => out.push(u8::from(*b)),
        Avro::Int(i) => long(i64::from(*i), out),
        Avro::Long(i) => long(*i, out),
        Avro::Double(d) => out.extend_from_slice(&d.to_le_bytes()),
        Avro::Bytes(b) => bytes(b, out),
        Avro::String(s) => bytes(s.as_bytes(), out),
        Avro::Fixed(_, b) => out.extend_from_slice(b),
        Avro::Enum(i, _) => long(i64::from(*i), out),
        Avro::Union(i, inner) => {
            long(i64::from(*i), out);
            encode(inner, out)?;
        }
        Avro::Array(items) => {
            if !items.is_empty() {
                len(items.len(), out);
                for i in items {
                    encode(i, out)?;
                }
            }
            out.push(0);
        }
        Avro::Map(entries) => {
            if !entries.is_empty() {
                len(entries.len(), out);
                let mut sorted: Vec<_> = entries.iter().collect();
                sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (k, v) in sorted {
                    bytes(k.as_bytes(), out);
                    encode(v, out)?;
                }
            }
            out.push(0);
        }
        Avro::Record(fields) => {
            for (_, f) in fields {
                encode(f, out)?;
            }
        }
        other => return Err(EncodeError::Unsupported(variant_name(other))),
    }
    Ok(())
}

fn variant_name(v: &Avro) -> &'static str {
    match v {
        Avro::Float(_) => "float",
        Avro::Date(_) => "date",
        Avro::Decimal(_) | Avro::BigDecimal(_) => "decimal",
        Avro::Uuid(_) => "uuid",
        Avro::Duration(_) => "duration",
        _ => "logical type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::writer::datum::GenericDatumWriter;
    use apache_avro::Schema;

    #[test]
    fn matches_apache_avro_byte_for_byte() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"T","fields":[
                {"name":"l","type":"long"},{"name":"s","type":"string"},
                {"name":"u","type":["null","double"]},{"name":"a","type":{"type":"array","items":"int"}},
                {"name":"m","type":{"type":"map","values":"boolean"}},
                {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
                {"name":"f","type":{"type":"fixed","name":"F","size":2}},{"name":"b","type":"bytes"}]}"#,
        )
        .unwrap();
        for l in [0, 1, -1, 63, -64, 64, i64::MAX, i64::MIN] {
            let v = Avro::Record(vec![
                ("l".into(), Avro::Long(l)),
                ("s".into(), Avro::String("héllo".into())),
                ("u".into(), Avro::Union(1, Box::new(Avro::Double(-2.5)))),
                ("a".into(), Avro::Array(vec![Avro::Int(7), Avro::Int(-300)])),
                (
                    "m".into(),
                    Avro::Map([("k".to_owned(), Avro::Boolean(true))].into()),
                ),
                ("e".into(), Avro::Enum(1, "Y".into())),
                ("f".into(), Avro::Fixed(2, vec![9, 8])),
                ("b".into(), Avro::Bytes(vec![])),
            ]);
            let theirs = GenericDatumWriter::builder(&schema)
                .build()
                .unwrap()
                .write_value_to_vec(v.clone())
                .unwrap();
            let mut ours = Vec::new();
            encode(&v, &mut ours).unwrap();
            assert_eq!(ours, theirs, "long {l}");
        }
    }

    #[test]
    fn maps_are_written_in_key_order() {
        // The same entries inserted in opposite orders into two maps with different random
        // hashers: one encoding.
        let entries: Vec<(String, Avro)> = (0..50)
            .map(|i| (format!("k{i:02}"), Avro::Long(i)))
            .collect();
        let m1: std::collections::HashMap<String, Avro> = entries.iter().cloned().collect();
        let m2: std::collections::HashMap<String, Avro> = entries.into_iter().rev().collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode(&Avro::Map(m1), &mut a).unwrap();
        encode(&Avro::Map(m2), &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(&a[..4], &[100, 6, b'k', b'0']);
    }
}
