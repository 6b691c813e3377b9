//! The GGUF writer (version 3, little-endian, 32-byte alignment), as
//! llama.cpp's `gguf-py` writes it.

use super::types::ggml_type_id;
use super::value::{MetaArray, MetaValue};
use anyhow::Result;
use candle_core::quantized::QTensor;
use std::io::Write;
use std::path::Path;

const ALIGN: u64 = 32;

fn w_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn w_array(w: &mut impl Write, a: &MetaArray) -> std::io::Result<()> {
    w.write_all(&a.elem_type().to_le_bytes())?;
    w.write_all(&(a.len() as u64).to_le_bytes())?;
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                w.write_all(&x.to_le_bytes())?;
            }
        };
    }
    match a {
        MetaArray::U8(v) => w.write_all(v)?,
        MetaArray::I8(v) => each!(v),
        MetaArray::U16(v) => each!(v),
        MetaArray::I16(v) => each!(v),
        MetaArray::U32(v) => each!(v),
        MetaArray::I32(v) => each!(v),
        MetaArray::U64(v) => each!(v),
        MetaArray::I64(v) => each!(v),
        MetaArray::F32(v) => each!(v),
        MetaArray::F64(v) => each!(v),
        MetaArray::Bool(v) => {
            for &b in v {
                w.write_all(&[b as u8])?;
            }
        }
        MetaArray::String(v) => {
            for x in v {
                w_str(w, x)?;
            }
        }
        MetaArray::Array(v) => {
            for x in v {
                w_array(w, x)?;
            }
        }
    }
    Ok(())
}

fn w_value(w: &mut impl Write, v: &MetaValue) -> std::io::Result<()> {
    match v {
        MetaValue::U8(x) => w.write_all(&[*x]),
        MetaValue::I8(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::U16(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::I16(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::U32(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::I32(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::U64(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::I64(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::F32(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::F64(x) => w.write_all(&x.to_le_bytes()),
        MetaValue::Bool(x) => w.write_all(&[*x as u8]),
        MetaValue::String(x) => w_str(w, x),
        MetaValue::Array(a) => w_array(w, a),
    }
}

fn pad(w: &mut impl Write, pos: u64) -> std::io::Result<u64> {
    let padded = pos.div_ceil(ALIGN) * ALIGN;
    w.write_all(&vec![0u8; (padded - pos) as usize])?;
    Ok(padded)
}

/// Writes a GGUF v3 file atomically (see `formats::atomic`).
/// Returns its size in bytes.
pub fn write_file(
    out: &Path,
    metadata: &[(String, MetaValue)],
    tensors: &[(String, QTensor)],
) -> Result<u64> {
    let mut size = 0;
    crate::formats::atomic::write_file_atomic(out, |file| {
        let mut w = CountingWriter { w: file, pos: 0 };
        w.write_all(b"GGUF")?;
        w.write_all(&3u32.to_le_bytes())?;
        w.write_all(&(tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(metadata.len() as u64).to_le_bytes())?;
        for (k, v) in metadata {
            w_str(&mut w, k)?;
            w.write_all(&v.type_id().to_le_bytes())?;
            w_value(&mut w, v)?;
        }
        let mut offset = 0u64;
        let mut datas = Vec::with_capacity(tensors.len());
        for (name, t) in tensors {
            w_str(&mut w, name)?;
            let dims = t.shape().dims();
            w.write_all(&(dims.len() as u32).to_le_bytes())?;
            for &d in dims.iter().rev() {
                w.write_all(&(d as u64).to_le_bytes())?;
            }
            w.write_all(&ggml_type_id(t.dtype()).to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            let data = t.data().map_err(std::io::Error::other)?;
            offset = (offset + data.len() as u64).div_ceil(ALIGN) * ALIGN;
            datas.push(data);
        }
        let pos = w.pos;
        pad(&mut w, pos)?;
        for data in datas {
            w.write_all(&data)?;
            let pos = w.pos;
            pad(&mut w, pos)?;
        }
        size = w.pos;
        Ok(())
    })?;
    Ok(size)
}

struct CountingWriter<W: Write> {
    w: W,
    pos: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.w.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}
