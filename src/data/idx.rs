//! IDX files (the MNIST / Fashion-MNIST format), raw or gzip: u8 images
//! `[n, rows, cols]` become float32 `[n, 1, rows, cols]` in [0, 1]; u8 labels.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use std::io::Read;
use std::path::Path;

/// Reads a file, un-gzipping it when it starts with the gzip magic.
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = crate::runtime::files::read_regular(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{}: corrupt gzip stream", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Validates the IDX header (u8 data, expected rank) and returns dims and payload.
fn parse(bytes: &[u8], rank: usize) -> Result<(Vec<usize>, &[u8])> {
    ensure!(bytes.len() >= 4, "truncated IDX header");
    ensure!(bytes[0] == 0 && bytes[1] == 0, "not an IDX file (bad magic)");
    ensure!(
        bytes[2] == 0x08,
        "IDX data type 0x{:02x} is not unsigned byte",
        bytes[2]
    );
    ensure!(
        bytes[3] as usize == rank,
        "IDX file has {} dimensions, expected {rank}",
        bytes[3]
    );
    let header = 4 + 4 * rank;
    ensure!(bytes.len() >= header, "truncated IDX header");
    let dims: Vec<usize> = (0..rank)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .context("IDX dimensions overflow")?;
    let data = &bytes[header..];
    ensure!(
        data.len() == count,
        "IDX dimensions {dims:?} need {count} bytes but the file has {}",
        data.len()
    );
    Ok((dims, data))
}

pub fn read_images(path: &Path) -> Result<Tensor> {
    let bytes = read_maybe_gzip(path)?;
    let (dims, data) = parse(&bytes, 3).with_context(|| format!("{}", path.display()))?;
    let v: Vec<f32> = data.iter().map(|&b| b as f32 / 255.0).collect();
    Ok(Tensor::from_vec(v, (dims[0], 1, dims[1], dims[2]), &Device::Cpu)?)
}

pub fn read_labels(path: &Path) -> Result<Vec<u32>> {
    let bytes = read_maybe_gzip(path)?;
    let (_, data) = parse(&bytes, 1).with_context(|| format!("{}", path.display()))?;
    Ok(data.iter().map(|&b| b as u32).collect())
}

/// The image and label files of an IDX folder (names containing `images-idx3` / `labels-idx1`);
/// one without the other is an error naming it.
pub fn find_pair(dir: &Path) -> Result<Option<(std::path::PathBuf, std::path::PathBuf)>> {
    let mut images = None;
    let mut labels = None;
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let slot = if name.contains("images-idx3") {
            &mut images
        } else if name.contains("labels-idx1") {
            &mut labels
        } else {
            continue;
        };
        if slot.replace(path.clone()).is_some() {
            bail!(
                "{}: more than one IDX {} file",
                dir.display(),
                if name.contains("images") { "image" } else { "label" }
            );
        }
    }
    match (images, labels) {
        (Some(i), None) => bail!(
            "{}: an IDX image file without a labels-idx1 file beside it",
            i.display()
        ),
        (None, Some(l)) => bail!(
            "{}: an IDX label file without an images-idx3 file beside it",
            l.display()
        ),
        pair => Ok(pair.0.zip(pair.1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_validated_against_the_payload() {
        let mut ok = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 1];
        ok.extend([0u8, 255, 51, 102]);
        assert_eq!(parse(&ok, 3).unwrap().0, vec![2, 2, 1]);
        assert!(parse(&ok[..ok.len() - 1], 3)
            .unwrap_err()
            .to_string()
            .contains("need 4 bytes"));
        assert!(parse(&ok, 1).unwrap_err().to_string().contains("dimensions"));
        let mut float = ok.clone();
        float[2] = 0x0d;
        assert!(parse(&float, 3).unwrap_err().to_string().contains("unsigned byte"));
        let huge = [0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255];
        assert!(parse(&huge, 3).is_err());
        assert!(parse(&[0, 0], 3).is_err());
    }
}
