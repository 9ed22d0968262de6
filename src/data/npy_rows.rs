//! `.npy` files read and written a block of rows at a time, so arrays of thousands of samples
//! (an evaluation's latents) never need to be held whole: a writer that appends rows to a
//! float32 file whose header states the final shape up front, made visible under its name only
//! once every row is in; a reader that seeks to the rows asked for.

use super::npy;
use crate::runtime::files::ensure_replaceable;
use crate::runtime::finite::ensure_finite;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Float32 rows appended in order to a temporary file, renamed to `path` by `finish`. Among
/// data-parallel ranks only rank 0 writes (as `write_atomic`); the others' writers hold nothing.
pub struct RowWriter {
    path: PathBuf,
    tmp: PathBuf,
    /// `None` once finished, and on ranks other than 0.
    file: Option<BufWriter<File>>,
    shape: Vec<usize>,
    written: usize,
}

impl RowWriter {
    /// A writer of an array of `shape` (its first dimension the rows).
    pub fn create(path: &Path, shape: &[usize]) -> Result<Self> {
        ensure!(!shape.is_empty(), "{}: an array of rows needs a shape", path.display());
        ensure_replaceable(path, "output")?;
        let name = path
            .file_name()
            .with_context(|| format!("{}: not a file path", path.display()))?;
        let tmp = path.with_file_name(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
        if !crate::runtime::ranks::place().is_root() {
            return Ok(Self {
                path: path.to_path_buf(),
                tmp,
                file: None,
                shape: shape.to_vec(),
                written: 0,
            });
        }
        let header = npy::header_bytes(shape);
        let mut file = BufWriter::new(File::create(&tmp).with_context(|| format!("{}: cannot write", path.display()))?);
        file.write_all(&header)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
            shape: shape.to_vec(),
            written: 0,
        })
    }

    /// Appends `rows` (`[r, …]` with the array's trailing shape); non-finite values are refused.
    pub fn append(&mut self, rows: &Tensor) -> Result<()> {
        ensure!(
            rows.dims().get(1..) == self.shape.get(1..) && self.written + rows.dim(0)? <= self.shape[0],
            "{}: rows of shape {:?} do not continue an array of shape {:?} at row {}",
            self.path.display(),
            rows.dims(),
            self.shape,
            self.written
        );
        ensure_finite(rows, &format!("the result for {}", self.path.display()))?;
        let values = rows.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.file
            .as_mut()
            .context("array already finished")?
            .write_all(&bytes)
            .with_context(|| format!("{}: cannot write", self.path.display()))?;
        self.written += rows.dim(0)?;
        Ok(())
    }

    /// Every row written: the file appears under its name.
    pub fn finish(mut self) -> Result<()> {
        if !crate::runtime::ranks::place().is_root() {
            return Ok(());
        }
        ensure!(
            self.written == self.shape[0],
            "{}: {} of {} rows written",
            self.path.display(),
            self.written,
            self.shape[0]
        );
        let file = self
            .file
            .take()
            .context("array already finished")?
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("{}: cannot write", self.path.display()))?;
        file.sync_all()
            .and_then(|_| std::fs::rename(&self.tmp, &self.path))
            .with_context(|| format!("{}: cannot write", self.path.display()))
    }
}

impl Drop for RowWriter {
    /// An unfinished array leaves no file behind (a finished one's temporary is gone already).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Reads blocks of rows of a float32 or float64 `.npy` file.
pub struct RowReader {
    path: PathBuf,
    file: File,
    data_start: u64,
    float64: bool,
    shape: Vec<usize>,
}

impl RowReader {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let mut head = vec![0u8; 12];
        let got = file
            .read(&mut head)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let header_end =
            npy::header_end(&head[..got]).with_context(|| format!("{}: malformed .npy", path.display()))?;
        let mut header = vec![0u8; header_end];
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_exact(&mut header))
            .with_context(|| format!("{}: malformed .npy (truncated header)", path.display()))?;
        let (float64, shape) = npy::header(&header).with_context(|| format!("{}: malformed .npy", path.display()))?;
        let elem = if float64 { 8 } else { 4 };
        let count = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if count.and_then(|c| c.checked_mul(elem)) != Some(len.saturating_sub(header_end as u64)) {
            bail!(
                "{}: malformed .npy (shape {shape:?} does not match the file's {len} bytes)",
                path.display()
            );
        }
        ensure!(!shape.is_empty(), "{}: a scalar, not an array of rows", path.display());
        Ok(Self {
            path: path.to_path_buf(),
            file,
            data_start: header_end as u64,
            float64,
            shape,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Rows `start .. start + len` as float32 `[len, …]` on the CPU; non-finite values refused.
    pub fn rows(&mut self, start: usize, len: usize) -> Result<Tensor> {
        ensure!(
            start + len <= self.shape[0],
            "{}: rows {start}..{} of {}",
            self.path.display(),
            start + len,
            self.shape[0]
        );
        let row: usize = self.shape[1..].iter().product();
        let elem = if self.float64 { 8 } else { 4 };
        let mut bytes = vec![0u8; len * row * elem];
        self.file
            .seek(SeekFrom::Start(self.data_start + (start * row * elem) as u64))
            .and_then(|_| self.file.read_exact(&mut bytes))
            .with_context(|| format!("{}: cannot read", self.path.display()))?;
        let values: Vec<f32> = match self.float64 {
            true => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32)
                .collect(),
            false => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("chunk of 4")))
                .collect(),
        };
        let mut shape = self.shape.clone();
        shape[0] = len;
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?;
        ensure_finite(&t, &self.path.display().to_string())?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dcm-npy-rows-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Rows appended in blocks make the file `npy::write` makes of the whole array, byte for
    /// byte, and any block read back equals that block of the array.
    #[test]
    fn blocks_write_and_read_the_whole_array() {
        let dir = scratch("blocks");
        let whole = Tensor::arange(0f32, 7. * 2. * 3., &Device::Cpu)
            .unwrap()
            .reshape((7, 2, 3))
            .unwrap();
        let path = dir.join("rows.npy");
        let mut w = RowWriter::create(&path, whole.dims()).unwrap();
        for (start, len) in [(0, 3), (3, 1), (4, 3)] {
            w.append(&whole.narrow(0, start, len).unwrap()).unwrap();
        }
        assert!(!path.exists(), "visible before finish");
        w.finish().unwrap();
        npy::write(&dir.join("whole.npy"), &whole).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(dir.join("whole.npy")).unwrap()
        );
        let mut r = RowReader::open(&path).unwrap();
        assert_eq!(r.shape(), &[7, 2, 3]);
        let got = r.rows(2, 4).unwrap();
        let want = whole.narrow(0, 2, 4).unwrap();
        assert_eq!(got.to_vec3::<f32>().unwrap(), want.to_vec3::<f32>().unwrap());
        assert!(r.rows(5, 3).is_err(), "past the end");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A writer dropped before every row is in leaves no file (and no temporary); finishing
    /// early and appending rows of another shape are errors.
    #[test]
    fn unfinished_arrays_leave_nothing() {
        let dir = scratch("unfinished");
        let path = dir.join("rows.npy");
        let mut w = RowWriter::create(&path, &[4, 2]).unwrap();
        w.append(&Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        assert!(w
            .append(&Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap())
            .is_err());
        assert!(w.finish().is_err());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file shorter than its header's shape is refused at open, naming the file.
    #[test]
    fn truncated_files_are_refused() {
        let dir = scratch("truncated");
        let path = dir.join("rows.npy");
        npy::write(&path, &Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = RowReader::open(&path).err().unwrap().to_string();
        assert!(err.contains("rows.npy") && err.contains("malformed"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
