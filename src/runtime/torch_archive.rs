//! The tensors of a PyTorch zip archive, `torch.save`'s format since torch 1.6 (`.ckpt`,
//! `.pt`, `.pth`, `.bin`): a zip holding `NAME/data.pkl`, the pickled state dict, and one
//! entry `NAME/data/KEY` of raw little-endian values per storage.
//!
//! The pickle is first checked (`pickle_check`), then parsed by candle's pickle reader into a
//! tree of values (nothing is executed); the tensors are found in it here rather than by
//! candle's `PthTensors`, which skips tensors it cannot read (int32 ones among them) with only
//! a line on stderr. Here every tensor record is either read or refused by name.

use super::pickle_check::check_pickle;
use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

type Zip = zip::ZipArchive<BufReader<File>>;

/// Where one tensor's values are: a zip entry, and the view into it (in elements).
struct Record {
    entry: String,
    dtype: DType,
    shape: Vec<usize>,
    stride: Vec<usize>,
    offset: usize,
    storage_len: usize,
}

/// An open archive whose pickles passed the safety check.
pub struct TorchArchive {
    path: PathBuf,
    zip: Mutex<Zip>,
    records: BTreeMap<String, Record>,
}

impl TorchArchive {
    /// The archive's state dict: the top-level dict's `state_dict` entry when it has one
    /// (Lightning checkpoints), else the top-level dict itself.
    pub fn open(path: &Path) -> Result<Self> {
        let at = path.display();
        let mut zip = open_zip(path)?;
        let pkl = data_pickle(&mut zip, path)?;
        let mut data = Vec::new();
        zip.by_name(&pkl)
            .map_err(anyhow::Error::from)
            .and_then(|mut e| Ok(e.read_to_end(&mut data)?))
            .map_err(|e| anyhow!("{at}: cannot read {pkl} ({e})"))?;
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut &data[..])
            .map_err(|e| anyhow!("{at}: {pkl} is not a pickle dcm can read ({e})"))?;
        let top = stack.finalize().map_err(|e| anyhow!("{at}: {pkl}: {e}"))?;
        let dir = pkl.strip_suffix("data.pkl").unwrap_or("");
        let mut records = BTreeMap::new();
        for (name, value) in state_dict(top, path)? {
            // Non-string keys belong to no state dict (Lightning's callback states).
            let Object::Unicode(name) = name else { continue };
            if let Some(r) = record(value, dir).map_err(|e| anyhow!("{at}: tensor '{name}': {e}"))? {
                records.insert(name, r);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            zip: Mutex::new(zip),
            records,
        })
    }

    /// The tensors' names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.records.keys().cloned().collect()
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.records.get(name).map(|r| r.shape.clone())
    }

    /// Tensor `name` on the CPU in its stored dtype, `None` if the archive has no such tensor.
    pub fn get(&self, name: &str) -> Result<Option<Tensor>> {
        let Some(r) = self.records.get(name) else {
            return Ok(None);
        };
        let mut zip = self
            .zip
            .lock()
            .map_err(|_| anyhow!("{}: reader poisoned", self.path.display()))?;
        let mut entry = zip
            .by_name(&r.entry)
            .map_err(|e| anyhow!("no entry {} ({e})", r.entry))?;
        let size = r.dtype.size_in_bytes();
        ensure!(
            entry.size() == (r.storage_len * size) as u64,
            "entry {} holds {} bytes, its storage needs {}",
            r.entry,
            entry.size(),
            r.storage_len * size
        );
        let mut bytes = Vec::with_capacity(r.storage_len * size);
        entry.read_to_end(&mut bytes)?;
        let storage = Tensor::from_raw_buffer(&bytes, r.dtype, &[r.storage_len], &Device::Cpu)?;
        Ok(Some(view(&storage, r)?))
    }
}

/// The elements of `storage` that the record's shape, stride and offset select.
fn view(storage: &Tensor, r: &Record) -> Result<Tensor> {
    let numel: usize = r.shape.iter().product();
    if numel == 0 {
        return Ok(Tensor::zeros(r.shape.as_slice(), r.dtype, &Device::Cpu)?);
    }
    let last = r.offset + r.shape.iter().zip(&r.stride).map(|(n, s)| (n - 1) * s).sum::<usize>();
    ensure!(
        last < r.storage_len,
        "its view reaches past its storage of {} values",
        r.storage_len
    );
    let contiguous = r.shape.iter().rev().scan(1, |step, &n| {
        let s = *step;
        *step *= n;
        Some(s)
    });
    let strides: Vec<usize> = contiguous.collect::<Vec<_>>().into_iter().rev().collect();
    if strides
        .iter()
        .zip(&r.stride)
        .zip(&r.shape)
        .all(|((a, b), n)| a == b || *n == 1)
    {
        return Ok(storage.narrow(0, r.offset, numel)?.reshape(r.shape.as_slice())?);
    }
    // A strided view (a transposed tensor saved as is): gather its elements in order.
    let mut index = Vec::with_capacity(numel);
    for flat in 0..numel {
        let (mut rest, mut at) = (flat, r.offset);
        for (n, s) in r.shape.iter().zip(&r.stride).rev() {
            at += (rest % n) * s;
            rest /= n;
        }
        index.push(at as i64);
    }
    let index = Tensor::new(index, &Device::Cpu)?;
    Ok(storage.index_select(&index, 0)?.reshape(r.shape.as_slice())?)
}

/// Opens `path` as a zip archive after checking it is one, that its values are little-endian
/// and that all its pickles name only allowed globals.
fn open_zip(path: &Path) -> Result<Zip> {
    let at = path.display();
    let mut file = File::open(path).with_context(|| format!("{at}: cannot open"))?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).with_context(|| format!("{at}: cannot read"))?;
    if n < 4 || &magic != b"PK\x03\x04" {
        bail!(
            "{at}: not a zip archive: a legacy PyTorch pickle (before torch 1.6) or not a PyTorch file at all; \
             re-save it with torch.save (zip format) or convert it to safetensors"
        );
    }
    let file = File::open(path).with_context(|| format!("{at}: cannot open"))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| anyhow!("{at}: bad zip archive ({e})"))?;
    for name in entries(&zip, path)? {
        if name.ends_with(".pkl") {
            check_pickle(&read_entry(&mut zip, &name, path)?, &format!("{at} ({name})"))?;
        } else if name.ends_with("/byteorder") {
            let order = read_entry(&mut zip, &name, path)?;
            ensure!(
                order == b"little",
                "{at}: values stored big-endian ({name}); dcm reads little-endian archives"
            );
        }
    }
    Ok(zip)
}

fn entries(zip: &Zip, path: &Path) -> Result<Vec<String>> {
    zip.file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<std::result::Result<Vec<String>, _>>()
        .map_err(|e| anyhow!("{}: bad zip archive ({e})", path.display()))
}

fn read_entry(zip: &mut Zip, name: &str, path: &Path) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    zip.by_name(name)
        .map_err(anyhow::Error::from)
        .and_then(|mut e| Ok(e.read_to_end(&mut data)?))
        .map_err(|e| anyhow!("{}: cannot read {name} ({e})", path.display()))?;
    Ok(data)
}

/// The one `data.pkl` of the archive.
fn data_pickle(zip: &mut Zip, path: &Path) -> Result<String> {
    let found: Vec<String> = entries(zip, path)?
        .into_iter()
        .filter(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "{}: a zip archive without data.pkl: not a PyTorch checkpoint",
            path.display()
        ),
        _ => bail!(
            "{}: several data.pkl ({}): not one PyTorch checkpoint",
            path.display(),
            found.join(", ")
        ),
    }
}

/// The entries of the state dict: `top["state_dict"]` if `top` is a dict with that key
/// holding a dict, else `top`, which must be a dict.
fn state_dict(top: Object, path: &Path) -> Result<Vec<(Object, Object)>> {
    let Object::Dict(entries) = top else {
        bail!("{}: the pickle holds no dict of tensors", path.display())
    };
    let key = Object::Unicode("state_dict".into());
    match entries
        .iter()
        .position(|(k, v)| *k == key && matches!(v, Object::Dict(_)))
    {
        Some(i) => match entries.into_iter().nth(i) {
            Some((_, Object::Dict(inner))) => Ok(inner),
            _ => unreachable!("position found a dict"),
        },
        None => Ok(entries),
    }
}

/// The record of a tensor value; `None` for a value that is no tensor (a step count, a
/// numpy scalar).
fn record(value: Object, dir: &str) -> Result<Option<Record>> {
    let Object::Reduce { callable, args } = value else {
        return Ok(None);
    };
    let Object::Class {
        module_name,
        class_name,
    } = *callable
    else {
        return Ok(None);
    };
    match (module_name.as_str(), class_name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2") => rebuild(*args, dir).map(Some),
        // (tensor, requires_grad, hooks): the tensor inside.
        ("torch._utils", "_rebuild_parameter") => record(first(*args)?, dir),
        // (rebuild function, type, its arguments, state): the plain tensor it rebuilds.
        ("torch._tensor", "_rebuild_from_type_v2") => {
            let mut parts = tuple(*args)?.into_iter();
            let (Some(callable), _, Some(args)) = (parts.next(), parts.next(), parts.next()) else {
                bail!("_rebuild_from_type_v2 without its arguments")
            };
            record(
                Object::Reduce {
                    callable: Box::new(callable),
                    args: Box::new(args),
                },
                dir,
            )
        }
        _ => Ok(None),
    }
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, …)` where storage is the persistent id
/// `('storage', torch.XStorage, key, location, numel)`.
fn rebuild(args: Object, dir: &str) -> Result<Record> {
    let mut args = tuple(args)?.into_iter();
    let (Some(storage), Some(offset), Some(shape), Some(stride)) = (args.next(), args.next(), args.next(), args.next())
    else {
        bail!("a tensor record with fewer than 4 arguments")
    };
    let storage = storage
        .persistent_load()
        .map_err(|_| anyhow!("its storage is not a persistent id"))?;
    let mut id = tuple(storage)?.into_iter().skip(1);
    let (Some(class), Some(key), _, Some(len)) = (id.next(), id.next(), id.next(), id.next()) else {
        bail!("a storage id with fewer than 5 fields")
    };
    let (_, class) = class.class().map_err(|_| anyhow!("its storage type is not a class"))?;
    let key = key.unicode().map_err(|_| anyhow!("its storage key is not a string"))?;
    Ok(Record {
        entry: format!("{dir}data/{key}"),
        dtype: storage_dtype(&class)?,
        shape: usizes(shape)?,
        stride: usizes(stride)?,
        offset: usize_of(offset)?,
        storage_len: usize_of(len)?,
    })
}

/// The dtype of a torch storage class; booleans are read as `u8` 0/1.
fn storage_dtype(class: &str) -> Result<DType> {
    Ok(match class {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" | "BoolStorage" => DType::U8,
        "ShortStorage" => DType::I16,
        "IntStorage" => DType::I32,
        "LongStorage" => DType::I64,
        other => bail!("storage type {other} is not one dcm reads"),
    })
}

fn tuple(o: Object) -> Result<Vec<Object>> {
    o.tuple()
        .map_err(|_| anyhow!("a tensor record argument is not a tuple"))
}

fn first(o: Object) -> Result<Object> {
    tuple(o)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("an empty argument tuple"))
}

fn usize_of(o: Object) -> Result<usize> {
    let v = o
        .int_or_long()
        .map_err(|_| anyhow!("a size, stride or offset is not an integer"))?;
    usize::try_from(v).map_err(|_| anyhow!("negative size or offset {v}"))
}

fn usizes(o: Object) -> Result<Vec<usize>> {
    tuple(o)?.into_iter().map(usize_of).collect()
}
