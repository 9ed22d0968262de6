//! Reads a PyTorch state dict saved with `torch.save` (a `.pth` file) into named tensors, in
//! both of torch.save's formats:
//! - the zip archive of PyTorch ≥ 1.6 (`runtime::torch_archive`, as pipelines' `.ckpt` files);
//! - the legacy stream of older releases, which weights published before 2020 use (pytorch-fid's
//!   Inception among them): a run of pickles — a magic number, the format version, system
//!   information, the state dict (tensors refer to storages by key), the storage keys in
//!   order — followed by each storage as an 8-byte little-endian element count and its raw
//!   little-endian values.
//!
//! Every pickle of either format passes `runtime::pickle_check` first: a file naming a Python
//! global that tensor serialisation does not need is refused by name. Only tensors are kept;
//! non-tensor entries are skipped. Tensors come back on the CPU in the file's dtype.

use crate::nets::layers::Params;
use crate::runtime::pickle_check::check_pickle;
use crate::runtime::torch_archive::TorchArchive;
use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// The legacy format's first pickle (protocol 2): the long integer 0x1950a86a20f9469cfc6c.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e";

/// Every tensor of the state dict in `path`, by name.
pub fn read_pth(path: &Path) -> Result<Params> {
    let file = path.display();
    let bytes = crate::runtime::files::read_regular(path).with_context(|| format!("{file}: cannot read"))?;
    if bytes.starts_with(ZIP_MAGIC) {
        drop(bytes);
        read_zip(path)
    } else if bytes.starts_with(LEGACY_MAGIC) {
        read_legacy(&bytes).map_err(|e| anyhow!("{file}: not a readable PyTorch state dict (legacy format): {e:#}"))
    } else {
        bail!("{file}: not a PyTorch .pth file (neither torch.save's zip archive nor its legacy format)")
    }
}

fn read_zip(path: &Path) -> Result<Params> {
    let archive = TorchArchive::open(path)?;
    let mut params = Params::new();
    for name in archive.names() {
        let t = archive
            .get(&name)
            .map_err(|e| anyhow!("{}: tensor '{name}': {e}", path.display()))?;
        params.extend(t.map(|t| (name, t)));
    }
    Ok(params)
}

fn read_legacy(bytes: &[u8]) -> Result<Params> {
    let mut cur = Cursor::new(&bytes[LEGACY_MAGIC.len()..]);
    let _version = unpickle(&mut cur)?;
    let _system = unpickle(&mut cur)?;
    let Object::Dict(entries) = unpickle(&mut cur)? else {
        bail!("the saved object is not a state dict");
    };
    let keys = match unpickle(&mut cur)? {
        Object::List(keys) => keys.into_iter().map(|k| k.unicode()).collect::<Result<Vec<_>, _>>(),
        _ => Err(Object::None),
    }
    .map_err(|_| anyhow!("the storage key list is not a list of strings"))?;
    let infos: Vec<TensorInfo> = entries
        .into_iter()
        .filter_map(|(name, value)| value.into_tensor_info(name, Path::new("")).transpose())
        .collect::<candle_core::Result<_>>()?;
    let storages = storages(bytes, cur.position() as usize + LEGACY_MAGIC.len(), &keys, &infos)?;
    infos.iter().map(|info| tensor(info, &storages)).collect()
}

/// The next pickle of the stream, once its globals passed the check.
fn unpickle(cur: &mut Cursor<&[u8]>) -> Result<Object> {
    let at = cur.position() as usize;
    check_pickle(
        &cur.get_ref()[at..],
        &format!("the pickle at byte {}", at + LEGACY_MAGIC.len()),
    )?;
    let mut stack = Stack::empty();
    stack.read_loop(cur)?;
    Ok(stack.finalize()?)
}

/// The bytes of each storage by key: they follow one another from `at`, in `keys`' order,
/// each after its element count; the element size comes from the tensors that use it.
fn storages<'a>(
    bytes: &'a [u8],
    mut at: usize,
    keys: &[String],
    infos: &[TensorInfo],
) -> Result<HashMap<String, &'a [u8]>> {
    let dtype_of: HashMap<&str, DType> = infos.iter().map(|i| (storage_key(i), i.dtype)).collect();
    let mut out = HashMap::new();
    for key in keys {
        let head = bytes
            .get(at..at + 8)
            .with_context(|| format!("storage '{key}' is cut off"))?;
        let count = u64::from_le_bytes(head.try_into()?) as usize;
        let size = dtype_of.get(key.as_str()).map_or(1, |d| d.size_in_bytes());
        let end = count.checked_mul(size).and_then(|n| n.checked_add(at + 8));
        let data = end
            .and_then(|end| bytes.get(at + 8..end))
            .with_context(|| format!("storage '{key}' is cut off"))?;
        out.insert(key.clone(), data);
        at += 8 + data.len();
    }
    Ok(out)
}

/// candle names a tensor's storage `{folder}/{key}`; the legacy format has no folder.
fn storage_key(info: &TensorInfo) -> &str {
    info.path.trim_start_matches('/')
}

fn tensor(info: &TensorInfo, storages: &HashMap<String, &[u8]>) -> Result<(String, Tensor)> {
    let name = &info.name;
    let data = storages
        .get(storage_key(info))
        .with_context(|| format!("tensor '{name}' refers to a storage the file does not hold"))?;
    ensure!(info.layout.is_contiguous(), "tensor '{name}' is not contiguous");
    // candle's layout gives the storage offset in bytes.
    let start = info.layout.start_offset();
    let len = info.layout.shape().elem_count() * info.dtype.size_in_bytes();
    let raw = data
        .get(start..start + len)
        .with_context(|| format!("tensor '{name}' reaches past the end of its storage"))?;
    let t = Tensor::from_raw_buffer(raw, info.dtype, info.layout.dims(), &Device::Cpu)?;
    Ok((name.clone(), t))
}
