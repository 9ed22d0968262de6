//! `.npy` arrays (NumPy format v1/v2/v3): float32 and float64 little-endian,
//! C order in; float32 out. Every malformed file is an error naming the problem;
//! the declared shape is checked against the file length before anything is allocated.

use crate::runtime::finite::ensure_finite;
use crate::runtime::memory::ensure_fits;
use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use std::io::Read;
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Largest header read (NumPy's own headers are a few hundred bytes).
const MAX_HEADER: usize = 1 << 20;

/// Parsed header: element size in bytes (4 or 8) and the shape.
#[derive(Debug, PartialEq)]
struct Header {
    float64: bool,
    shape: Vec<usize>,
}

fn header_value<'a>(dict: &'a str, key: &str) -> Result<&'a str> {
    let pat = format!("'{key}':");
    let start = dict
        .find(&pat)
        .with_context(|| format!("header has no '{key}' entry"))?
        + pat.len();
    Ok(dict[start..].trim_start())
}

fn parse_header(dict: &str) -> Result<Header> {
    let descr = header_value(dict, "descr")?;
    let float64 = if descr.starts_with("'<f4'") || descr.starts_with("'=f4'") {
        false
    } else if descr.starts_with("'<f8'") || descr.starts_with("'=f8'") {
        true
    } else {
        let end = descr.find(',').unwrap_or(descr.len());
        bail!(
            "unsupported dtype {} (only little-endian float32 '<f4' and float64 '<f8')",
            &descr[..end]
        );
    };
    let fortran = header_value(dict, "fortran_order")?;
    if fortran.starts_with("True") {
        bail!("fortran_order arrays are not supported (save with C order)");
    }
    ensure!(fortran.starts_with("False"), "fortran_order must be True or False");
    let shape = header_value(dict, "shape")?;
    ensure!(shape.starts_with('('), "shape must be a tuple");
    let close = shape.find(')').context("shape tuple is not closed")?;
    let shape = shape[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .with_context(|| format!("shape entry '{s}' is not a non-negative integer"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Header { float64, shape })
}

/// Where the header of a `.npy` file ends (and its data starts), from its first 12 bytes.
pub fn header_end(bytes: &[u8]) -> Result<usize> {
    ensure!(
        bytes.len() >= 10 && &bytes[..6] == MAGIC,
        "not a .npy file (bad magic string)"
    );
    let (len_bytes, start) = match bytes[6] {
        1 => (2, 10),
        2 | 3 => (4, 12),
        v => bail!("unsupported .npy version {v}"),
    };
    ensure!(bytes.len() >= start, "truncated .npy header");
    let header_len = bytes[8..8 + len_bytes]
        .iter()
        .rev()
        .fold(0usize, |acc, &b| acc * 256 + b as usize);
    start.checked_add(header_len).context("truncated .npy header")
}

/// Whether the elements are float64 (else float32), and the shape, from the whole header.
pub fn header(bytes: &[u8]) -> Result<(bool, Vec<usize>)> {
    let data_start = header_end(bytes)
        .ok()
        .filter(|&e| e <= bytes.len())
        .context("truncated .npy header")?;
    let start = if bytes[6] == 1 { 10 } else { 12 };
    let dict = std::str::from_utf8(&bytes[start..data_start]).context(".npy header is not text")?;
    let header = parse_header(dict)?;
    Ok((header.float64, header.shape))
}

/// Decodes the bytes of a `.npy` file into a float32 tensor on the CPU.
pub fn decode(bytes: &[u8]) -> Result<Tensor> {
    let data_start = header_end(bytes)?;
    ensure!(data_start <= bytes.len(), "truncated .npy header");
    let (float64, shape) = header(bytes)?;
    let values = values(&mut &bytes[data_start..], float64, &shape)?;
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// The element count of `shape`, refused when it overflows.
fn count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .context("shape is too large")
}

/// The data of an array of `shape` read from `src` block by block into float32 values: memory
/// holds the values and one block, never the file's bytes as well. `src` must hold exactly the
/// data the shape declares.
fn values(src: &mut impl Read, float64: bool, shape: &[usize]) -> Result<Vec<f32>> {
    let count = count(shape)?;
    let elem = if float64 { 8 } else { 4 };
    let needs = count.checked_mul(elem).context("shape is too large")?;
    let short = |got: usize| anyhow!("shape {shape:?} needs {needs} data bytes but the file has {got}");
    let mut values: Vec<f32> = Vec::with_capacity(count);
    // 1 MiB: a whole number of elements of either size.
    let mut block = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < needs {
        let want = block.len().min(needs - got);
        let n = read_full(src, &mut block[..want])?;
        got += n;
        ensure!(n == want, "{}", short(got));
        match float64 {
            true => values.extend(
                block[..n]
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32),
            ),
            false => values.extend(
                block[..n]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("chunk of 4"))),
            ),
        }
    }
    let extra = read_full(src, &mut block[..1])?;
    ensure!(
        extra == 0,
        "shape {shape:?} needs {needs} data bytes but the file has more"
    );
    Ok(values)
}

/// Reads into `buf` until it is full or the source ends; the bytes read.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

/// Reads a `.npy` file as float32; errors name the file. The header is read first, so an array
/// larger than the memory available is refused before its data is read.
pub fn read(path: &Path) -> Result<Tensor> {
    let bad = || format!("{}: malformed .npy", path.display());
    let mut file =
        std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?);
    let mut head = vec![0u8; 12];
    let n = read_full(&mut file, &mut head).with_context(|| format!("{}: cannot read", path.display()))?;
    head.truncate(n);
    let end = header_end(&head).with_context(bad)?;
    ensure!(end <= MAX_HEADER, "{}: header of {end} bytes", bad());
    // The first bytes may reach past a very short header: they start the data.
    let leftover = head.split_off(end.min(head.len()));
    let missing = end - head.len();
    let mut rest = vec![0u8; missing];
    ensure!(
        read_full(&mut file, &mut rest).with_context(bad)? == missing,
        "{}: truncated .npy header",
        bad()
    );
    head.extend(rest);
    let (float64, shape) = header(&head).with_context(bad)?;
    let elements = count(&shape).with_context(bad)?;
    // A file's length is checked against the shape before the values are allocated.
    if let Some(m) = std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.len()) {
        let needs = (elements as u64).saturating_mul(if float64 { 8 } else { 4 });
        let has = m.saturating_sub(end as u64);
        ensure!(
            needs == has,
            "{}: shape {shape:?} needs {needs} data bytes but the file has {has}",
            bad()
        );
    }
    ensure_fits(4.0 * elements as f64, &path.display().to_string())?;
    let values = values(&mut (&leftover[..]).chain(file), float64, &shape).with_context(bad)?;
    // float64 values beyond float32's range become infinite here, and are refused too (checked
    // on the values: a check on the tensor would copy it).
    ensure!(
        values.iter().all(|v| v.is_finite()),
        "{}: contains NaN or infinite values",
        path.display()
    );
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// The header of a float32 `.npy` (v1.0) of `dims`, padded to 64 bytes.
pub fn header_bytes(dims: &[usize]) -> Vec<u8> {
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let pad = 64 - (10 + dict.len() + 1) % 64;
    dict.extend(std::iter::repeat_n(' ', pad % 64));
    dict.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Encodes a tensor as a float32 `.npy` (v1.0, header padded to 64 bytes).
pub fn encode(t: &Tensor) -> Result<Vec<u8>> {
    let mut out = header_bytes(t.dims());
    out.reserve(4 * t.elem_count());
    for v in t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()? {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Writes a tensor as float32 `.npy`, atomically.
/// Writes `t`, refusing a non-finite result rather than reporting success with it.
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    ensure_finite(t, &format!("the result for {}", path.display()))?;
    crate::runtime::files::write_atomic(path, &encode(t)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_preserves_shape_and_values() {
        let t = Tensor::arange(0f32, 24., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        let bytes = encode(&t).unwrap();
        assert_eq!((bytes.len() - 4 * 24) % 64, 0, "header must be 64-byte aligned");
        let back = decode(&bytes).unwrap();
        assert_eq!(back.dims(), &[2, 3, 4]);
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            (0..24).map(|v| v as f32).collect::<Vec<_>>()
        );
    }

    fn npy_bytes(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        bytes.extend_from_slice(dict.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn float64_input_is_converted() {
        let data = [1.5f64.to_le_bytes(), (-2.25f64).to_le_bytes()].concat();
        let bytes = npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }\n", &data);
        assert_eq!(decode(&bytes).unwrap().to_vec1::<f32>().unwrap(), vec![1.5, -2.25]);
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        let good = encode(&Tensor::zeros((3, 2), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
        for cut in [0, 5, 9, 20, good.len() - 1] {
            assert!(decode(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let data = [0u8; 24];
        let huge = npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999), }",
            &data,
        );
        assert!(decode(&huge).unwrap_err().to_string().contains("too large"));
        let short = npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2), }", &data);
        assert!(decode(&short).unwrap_err().to_string().contains("needs 32 data bytes"));
        let int = npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (3, 2), }", &data);
        assert!(decode(&int).unwrap_err().to_string().contains("unsupported dtype"));
        let fortran = npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (3, 2), }", &data);
        assert!(decode(&fortran).unwrap_err().to_string().contains("fortran_order"));
    }
}
