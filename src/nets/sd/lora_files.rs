//! LoRA files for the adapters of a [`UNet`](crate::nets::sd::unet::UNet), in the layouts that
//! diffusers, ComfyUI and A1111 load (docs/SD_FORMATS.md, "LoRA layouts"; fixtures in
//! `tests/fixtures/sd/lora/`).
//!
//! **Export** writes one adapter set (dcm names `PATH.lora_A.weight` / `PATH.lora_B.weight`,
//! one [`LoraConfig`]) as
//! - [`KOHYA_FILE`], the layout of the published LCM-LoRA: kohya keys with diffusers module
//!   names, `lora_unet_<PATH with every '.' → '_'>.lora_down.weight` (A), `.lora_up.weight` (B)
//!   and `.alpha` (a 0-d f32 tensor, f64 where f32 cannot hold alpha exactly). Without
//!   [`KohyaOptions::info`] the header metadata is `{"format": "pt"}` only, exactly as the
//!   fixture's `lora_kohya.safetensors`; with it, kohya's and ModelSpec's keys naming the base
//!   model (docs/SD_FORMATS.md, "LoRA metadata"). [`KohyaNames::Ldm`] writes ldm module names
//!   instead (`lora_unet_input_blocks_4_1_…`). diffusers' `load_lora_weights`, ComfyUI and
//!   A1111 read the alphas from the keys.
//! - [`PEFT_FILE`], diffusers' PEFT layout: `unet.PATH.lora_A.weight` / `.lora_B.weight`, rank
//!   and alpha in the header as diffusers' `save_lora_weights` writes them
//!   (`lora_adapter_metadata`: JSON with `unet.r`, `unet.lora_alpha` and `unet.target_modules`
//!   = the module paths; diffusers passes these to peft's `LoraConfig`). Alpha is **not** folded
//!   into B: the file round-trips exactly through dcm and diffusers (which reads the metadata).
//!   A loader that ignores the metadata (ComfyUI, diffusers before 0.34) assumes alpha = rank:
//!   give it the kohya file.
//!
//! Conv adapters have A `[r, in, kh, kw]` (the layer's kernel) and B `[out, r, 1, 1]`; SD 1.x's
//! 1×1 `proj_in/out` have 4-D factors. Tensors keep their dtype. The header lists the tensors
//! as safetensors orders them and the metadata sorted, so the same adapters give the same bytes;
//! files are written atomically.
//!
//! **Import** ([`import`]) reads the kohya file, the PEFT file, and diffusers' mixed layout
//! (`PATH.lora.down.weight` / `.lora.up.weight`, written for attention layers by diffusers'
//! LCM-LoRA script and the paper's code), with or without `unet.` / `base_model.model.`
//! prefixes, key by key. Decisions:
//! - Module names are looked up **exactly** in a table of every linear and conv layer of the
//!   UNet configuration ([`UNetConfig::adaptable_layers`]), kohya names by the flattening of
//!   their diffusers or ldm name ([`LdmUnetNames`]); a key that names no module, or is no LoRA
//!   factor or alpha, is an error naming it.
//! - Text-encoder keys (`lora_te…`, `text_encoder…`) are an error under
//!   [`TextEncoderParts::Refuse`] (the default): dcm applies LoRA to the UNet only, and
//!   dropping part of a file silently would give another model than its author's. `Ignore`
//!   skips them and lists them in [`LoraFile::ignored`].
//! - Alpha of a module: its own `.alpha` key (kohya; any layout), else PEFT metadata
//!   (`unet.alpha_pattern` entries matching the module path exactly or as a dot-boundary
//!   suffix, else `unet.lora_alpha`), else the rank (what loaders assume without either).
//! - One rank and alpha for all modules (dcm's adapters share one [`LoraConfig`]): lower-rank
//!   modules are zero-padded to the largest rank and scale ratios folded into B, which keeps
//!   every update (`lora_ranks`; listed in [`LoraFile::padded`] / [`LoraFile::rescaled`]).
//!   `use_dora` / `use_rslora` in the metadata are errors.
//! - Factors are f16/bf16/f32/f64, finite, and fit their layer's weight exactly (no reshaping
//!   between 2-D and 1×1 4-D factors); a factor without its partner is an error naming it.

use crate::nets::layers::Params;
use crate::nets::lora::LoraConfig;
use crate::nets::sd::ldm_names::LdmUnetNames;
use crate::nets::sd::lora_metadata::{kohya_metadata, LoraInfo};
use crate::nets::sd::lora_ranks::{unify, Checked};
use crate::nets::sd::unet::UNetLora;
use crate::nets::sd::unet_config::UNetConfig;
use crate::runtime::finite::ensure_finite;
use crate::runtime::tensor_file;
use anyhow::{anyhow, bail, ensure, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// The kohya-layout file's name in an output folder.
pub const KOHYA_FILE: &str = "lora.safetensors";
/// The PEFT-layout file's name in an output folder (diffusers' default LoRA weight name).
pub const PEFT_FILE: &str = "pytorch_lora_weights.safetensors";

const KOHYA_PREFIX: &str = "lora_unet_";
const METADATA_KEY: &str = "lora_adapter_metadata";

/// How a file names its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LoraLayout {
    /// `lora_unet_….lora_down.weight` / `.lora_up.weight` / `.alpha`, diffusers module names.
    Kohya,
    /// The kohya layout with ldm module names (`lora_unet_input_blocks_4_1_…`).
    KohyaLdm,
    /// `….lora_A.weight` / `.lora_B.weight`.
    Peft,
    /// Some modules as `….lora.down.weight` / `.lora.up.weight` (diffusers' mixed layout).
    Mixed,
}

/// A UNet LoRA read from a file, in dcm's naming.
#[derive(Clone, Debug)]
pub struct LoraFile {
    pub layout: LoraLayout,
    /// The rank of every module and the file's (most common) alpha.
    pub cfg: LoraConfig,
    /// The adapted modules' paths, sorted.
    pub targets: Vec<String>,
    /// `PATH.lora_A.weight` / `PATH.lora_B.weight` for every target, in the file's dtype.
    pub params: Params,
    /// Modules whose own scale (alpha / rank) differed from `cfg`'s and was folded into their B.
    pub rescaled: Vec<String>,
    /// Modules of a lower rank than `cfg.rank`, zero-padded to it (the same update).
    pub padded: Vec<String>,
    /// Text-encoder keys skipped under [`TextEncoderParts::Ignore`].
    pub ignored: Vec<String>,
}

/// What to do with a file's text-encoder keys (`--lora-text-encoder`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TextEncoderParts {
    /// An error naming the first key and the flag.
    #[default]
    Refuse,
    /// Skip them (listed in [`LoraFile::ignored`]): the UNet part alone is applied.
    Ignore,
}

impl std::str::FromStr for TextEncoderParts {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "refuse" => Ok(Self::Refuse),
            "ignore" => Ok(Self::Ignore),
            _ => bail!("--lora-text-encoder {s}: expected ignore or refuse"),
        }
    }
}

/// Which module names the kohya file is written with (`--lora-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KohyaNames {
    /// diffusers' (`lora_unet_down_blocks_1_attentions_0_…`), as the published LCM-LoRA.
    #[default]
    Diffusers,
    /// The original ldm code's (`lora_unet_input_blocks_4_1_…`), as kohya's SDXL LoRAs.
    Ldm,
}

impl std::str::FromStr for KohyaNames {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "diffusers" => Ok(Self::Diffusers),
            "ldm" => Ok(Self::Ldm),
            _ => bail!("--lora-format {s}: expected diffusers or ldm"),
        }
    }
}

/// How the kohya file is written: module names, and the metadata that tells clients its base
/// model (`None`: `{"format": "pt"}` only).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KohyaOptions {
    pub names: KohyaNames,
    pub info: Option<LoraInfo>,
}

impl LoraFile {
    /// The adapters to build the UNet with (`UNet::new(cfg, &base + params, Some(&lora))`).
    pub fn unet_lora(&self) -> UNetLora {
        UNetLora {
            cfg: self.cfg,
            targets: self.targets.clone(),
        }
    }
}

/// Reads a LoRA file for the UNet of `unet_cfg` (any of the three layouts; see the module
/// documentation). Errors name the file and the key.
pub fn import(path: &Path, unet_cfg: &UNetConfig, text_encoder: TextEncoderParts) -> Result<LoraFile> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("{}: cannot read LoRA file ({e})", path.display()))?;
    parse(&bytes, unet_cfg, text_encoder).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Writes [`KOHYA_FILE`] and [`PEFT_FILE`] into `dir` (which must exist).
pub fn export(
    dir: &Path,
    unet_cfg: &UNetConfig,
    adapters: &Params,
    cfg: LoraConfig,
    kohya: &KohyaOptions,
) -> Result<()> {
    export_kohya(&dir.join(KOHYA_FILE), unet_cfg, adapters, cfg, kohya)?;
    export_peft(&dir.join(PEFT_FILE), unet_cfg, adapters, cfg)
}

/// Writes `adapters` (dcm names, rank `cfg.rank`, every module one of the UNet's) in kohya
/// layout with `kohya.names` module names, a per-module alpha and `kohya.info`'s metadata.
pub fn export_kohya(
    path: &Path,
    unet_cfg: &UNetConfig,
    adapters: &Params,
    cfg: LoraConfig,
    kohya: &KohyaOptions,
) -> Result<()> {
    let at = |e: anyhow::Error| anyhow!("{}: {e}", path.display());
    let modules = checked_adapters(unet_cfg, adapters, cfg).map_err(at)?;
    let ldm = match kohya.names {
        KohyaNames::Diffusers => None,
        KohyaNames::Ldm => Some(LdmUnetNames::new(unet_cfg).map_err(at)?),
    };
    let mut tensors = Vec::new();
    for (module, a, b) in modules {
        let name = match &ldm {
            None => module.clone(),
            Some(n) => n
                .to_ldm(&module)
                .ok_or_else(|| at(anyhow!("module '{module}' has no ldm name")))?,
        };
        let key = format!("{KOHYA_PREFIX}{}", kohya_name(&name));
        tensors.push((format!("{key}.lora_down.weight"), a));
        tensors.push((format!("{key}.lora_up.weight"), b));
        tensors.push((format!("{key}.alpha"), alpha_tensor(cfg.alpha).map_err(at)?));
    }
    let meta = match &kohya.info {
        Some(info) => kohya_metadata(unet_cfg, cfg, info),
        None => BTreeMap::from([("format", "pt".to_string())]),
    };
    write_safetensors(path, tensors, &meta)
}

/// Writes `adapters` in diffusers' PEFT layout with rank and alpha in the header metadata.
pub fn export_peft(path: &Path, unet_cfg: &UNetConfig, adapters: &Params, cfg: LoraConfig) -> Result<()> {
    let at = |e: anyhow::Error| anyhow!("{}: {e}", path.display());
    let modules = checked_adapters(unet_cfg, adapters, cfg).map_err(at)?;
    let targets: Vec<&str> = modules.iter().map(|(m, _, _)| m.as_str()).collect();
    let meta = serde_json::json!({
        "unet.lora_alpha": alpha_json(cfg.alpha),
        "unet.r": cfg.rank,
        "unet.target_modules": targets,
    });
    let meta = BTreeMap::from([
        ("format", "pt".to_string()),
        (METADATA_KEY, serde_json::to_string_pretty(&meta)?),
    ]);
    let mut tensors = Vec::new();
    for (module, a, b) in modules {
        tensors.push((format!("unet.{module}.lora_A.weight"), a));
        tensors.push((format!("unet.{module}.lora_B.weight"), b));
    }
    write_safetensors(path, tensors, &meta)
}

/// The UNet's adaptable layers: base weight shape by module path, module paths by kohya name
/// (diffusers' and ldm's flattenings, which never coincide: their roots differ).
struct Modules {
    shapes: BTreeMap<String, Vec<usize>>,
    kohya: BTreeMap<String, Vec<(String, LoraLayout)>>,
    ldm: LdmUnetNames,
}

impl Modules {
    fn new(cfg: &UNetConfig) -> Result<Self> {
        let layers = cfg.adaptable_layers()?;
        let ldm = LdmUnetNames::new(cfg)?;
        let mut kohya: BTreeMap<String, Vec<(String, LoraLayout)>> = BTreeMap::new();
        for (path, _) in &layers {
            let entry = (path.clone(), LoraLayout::Kohya);
            kohya.entry(kohya_name(path)).or_default().push(entry);
            if let Some(name) = ldm.to_ldm(path) {
                let entry = (path.clone(), LoraLayout::KohyaLdm);
                kohya.entry(kohya_name(&name)).or_default().push(entry);
            }
        }
        Ok(Self {
            shapes: layers.into_iter().collect(),
            kohya,
            ldm,
        })
    }

    /// The module `path` of `key`, exactly as the UNet names it.
    fn by_path(&self, path: &str, key: &str) -> Result<String> {
        ensure!(
            self.shapes.contains_key(path),
            "key '{key}' matches no module of the UNet (no layer '{path}')"
        );
        Ok(path.to_string())
    }

    /// The module whose kohya name (diffusers' or ldm's) is `flat` (`key` names it), and which
    /// naming it is.
    fn by_kohya(&self, flat: &str, key: &str) -> Result<(String, LoraLayout)> {
        match self.kohya.get(flat).map(Vec::as_slice) {
            Some([one]) => Ok(one.clone()),
            Some(many) => {
                let paths: Vec<&str> = many.iter().map(|(p, _)| p.as_str()).collect();
                bail!("key '{key}' is ambiguous: it could be any of {}", paths.join(", "))
            }
            None => bail!(
                "key '{key}' matches no module of the UNet (no layer with a diffusers or ldm name '{flat}' with '.' → '_')"
            ),
        }
    }
}

/// Kohya's flattening of a module path: every `.` → `_`.
fn kohya_name(path: &str) -> String {
    path.replace('.', "_")
}

/// Which tensor of a module's adapter a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// A (`lora_down`, `lora_A`).
    Down,
    /// B (`lora_up`, `lora_B`).
    Up,
    Alpha,
}

/// Key suffixes of the kohya layout (after the flattened module name).
const KOHYA_PARTS: [(&str, Part); 3] = [
    ("lora_down.weight", Part::Down),
    ("lora_up.weight", Part::Up),
    ("alpha", Part::Alpha),
];

/// Key suffixes after a module path: PEFT's, then the mixed layout's (`true`).
const PATH_PARTS: [(&str, Part, bool); 5] = [
    (".lora_A.weight", Part::Down, false),
    (".lora_B.weight", Part::Up, false),
    (".lora.down.weight", Part::Down, true),
    (".lora.up.weight", Part::Up, true),
    (".alpha", Part::Alpha, false),
];

/// One parsed key: module path, part, and the layout its spelling belongs to.
struct Key {
    module: String,
    part: Part,
    layout: LoraLayout,
}

/// Whether `key` belongs to a text encoder's LoRA (kohya's `lora_te…`, diffusers' `text_encoder…`).
fn is_text_encoder(key: &str) -> bool {
    key.starts_with("lora_te") || key.starts_with("text_encoder")
}

fn parse_key(key: &str, modules: &Modules) -> Result<Key> {
    if let Some(rest) = key.strip_prefix(KOHYA_PREFIX) {
        let (flat, suffix) = rest.split_once('.').unwrap_or((rest, ""));
        if let Some(&(_, part)) = KOHYA_PARTS.iter().find(|(s, _)| *s == suffix) {
            let (module, layout) = modules.by_kohya(flat, key)?;
            return Ok(Key { module, part, layout });
        }
    }
    let name = key.strip_prefix("unet.").unwrap_or(key);
    let name = name.strip_prefix("base_model.model.").unwrap_or(name);
    for (suffix, part, mixed) in PATH_PARTS {
        if let Some(path) = name.strip_suffix(suffix) {
            let layout = if mixed { LoraLayout::Mixed } else { LoraLayout::Peft };
            let module = modules.by_path(path, key)?;
            return Ok(Key { module, part, layout });
        }
    }
    bail!(
        "key '{key}' is not a LoRA factor or alpha of a UNet module (lora_unet_NAME.lora_down.weight / \
         .lora_up.weight / .alpha, or PATH.lora_A.weight / .lora_B.weight / .lora.down.weight / .lora.up.weight)"
    )
}

/// The tensors a file gives for one module, each with its key.
#[derive(Default)]
struct Found {
    down: Option<(String, Tensor)>,
    up: Option<(String, Tensor)>,
    alpha: Option<(String, Tensor)>,
}

impl Found {
    fn set(&mut self, part: Part, key: &str, t: Tensor) -> Result<()> {
        let slot = match part {
            Part::Down => &mut self.down,
            Part::Up => &mut self.up,
            Part::Alpha => &mut self.alpha,
        };
        if let Some((other, _)) = slot {
            bail!("keys '{other}' and '{key}' are the same tensor of one module");
        }
        *slot = Some((key.to_string(), t));
        Ok(())
    }
}

/// The partner key a factor key needs: the same spelling with down ↔ up.
fn partner(key: &str) -> String {
    const PAIRS: [(&str, &str); 3] = [
        (".lora_down.weight", ".lora_up.weight"),
        (".lora_A.weight", ".lora_B.weight"),
        (".lora.down.weight", ".lora.up.weight"),
    ];
    for (down, up) in PAIRS {
        if let Some(stem) = key.strip_suffix(down) {
            return format!("{stem}{up}");
        }
        if let Some(stem) = key.strip_suffix(up) {
            return format!("{stem}{down}");
        }
    }
    format!("the partner of '{key}'")
}

/// Checks one module's tensors against its layer's weight shape `base`.
fn check_module(module: &str, base: &[usize], found: Found) -> Result<Checked> {
    let (down, up) = match (found.down, found.up) {
        (Some(d), Some(u)) => (d, u),
        (Some((k, _)), None) | (None, Some((k, _))) => bail!("key '{k}' has no partner '{}'", partner(&k)),
        (None, None) => {
            let key = found.alpha.map(|(k, _)| k).unwrap_or_default();
            bail!("key '{key}' is the alpha of module '{module}', which has no lora_down/lora_up (A/B) factors")
        }
    };
    let rank = down.1.dims().first().copied().unwrap_or(0);
    ensure!(rank >= 1, "key '{}' has shape {:?}: no rank", down.0, down.1.dims());
    let a_shape: Vec<usize> = std::iter::once(rank).chain(base[1..].iter().copied()).collect();
    let b_shape: Vec<usize> = [base[0], rank].into_iter().chain(base[2..].iter().map(|_| 1)).collect();
    check_factor(&down, &a_shape, module, base)?;
    check_factor(&up, &b_shape, module, base)?;
    let alpha = found.alpha.map(|(k, t)| alpha_value(&k, &t)).transpose()?;
    Ok(Checked {
        a: down.1,
        b: up.1,
        alpha,
    })
}

fn check_factor((key, t): &(String, Tensor), want: &[usize], module: &str, base: &[usize]) -> Result<()> {
    ensure!(
        matches!(t.dtype(), DType::F16 | DType::BF16 | DType::F32 | DType::F64),
        "key '{key}' has dtype {:?}; LoRA factors must be f16, bf16, f32 or f64",
        t.dtype()
    );
    ensure!(
        t.dims() == want,
        "key '{key}' has shape {:?}, expected {want:?} for module '{module}' (weight {base:?})",
        t.dims()
    );
    ensure_finite(t, &format!("key '{key}'"))
}

fn alpha_value(key: &str, t: &Tensor) -> Result<f64> {
    ensure!(
        t.elem_count() == 1 && t.rank() <= 1,
        "key '{key}' has shape {:?}; an alpha is one number",
        t.dims()
    );
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0];
    ensure!(
        v.is_finite() && v > 0.0,
        "key '{key}': alpha {v} must be finite and positive"
    );
    Ok(v)
}

/// What the PEFT metadata (`lora_adapter_metadata`, keys `unet.…`) says about alpha and rank.
#[derive(Default)]
struct PeftMeta {
    alpha: Option<f64>,
    rank: Option<usize>,
    has_rank_pattern: bool,
    alpha_pattern: Vec<(String, f64)>,
}

/// An error about the header metadata.
fn meta_err(what: &str) -> anyhow::Error {
    anyhow!("header metadata '{METADATA_KEY}': {what}")
}

/// `unet.KEY` of the metadata JSON, unless absent or null.
fn unet_entry<'a>(obj: &'a serde_json::Map<String, serde_json::Value>, key: &str) -> Option<&'a serde_json::Value> {
    obj.get(&format!("unet.{key}")).filter(|v| !v.is_null())
}

fn meta_number(key: &str, v: &serde_json::Value) -> Result<f64> {
    v.as_f64().ok_or_else(|| meta_err(&format!("'{key}' is not a number")))
}

/// Whether `unet.KEY` holds something other than an empty object.
fn meta_is_set(obj: &serde_json::Map<String, serde_json::Value>, key: &str) -> bool {
    unet_entry(obj, key).is_some_and(|v| v.as_object().is_none_or(|o| !o.is_empty()))
}

/// `unet.alpha_pattern`: module path (or dot-boundary suffix) → alpha; regular expressions
/// beyond a literal path are refused.
fn alpha_pattern(obj: &serde_json::Map<String, serde_json::Value>) -> Result<Vec<(String, f64)>> {
    if !meta_is_set(obj, "alpha_pattern") {
        return Ok(Vec::new());
    }
    let patterns = unet_entry(obj, "alpha_pattern").and_then(|v| v.as_object());
    let patterns = patterns.ok_or_else(|| meta_err("'unet.alpha_pattern' is not an object"))?;
    let mut out = Vec::new();
    for (k, v) in patterns {
        if k.contains(['*', '+', '?', '(', ')', '[', ']', '{', '}', '|', '^', '$', '\\']) {
            return Err(meta_err(&format!(
                "'unet.alpha_pattern' key '{k}' is a regular expression; only module paths are supported"
            )));
        }
        out.push((k.clone(), meta_number(&format!("unet.alpha_pattern.{k}"), v)?));
    }
    Ok(out)
}

impl PeftMeta {
    fn read(metadata: &Option<HashMap<String, String>>) -> Result<Self> {
        let Some(text) = metadata.as_ref().and_then(|m| m.get(METADATA_KEY)) else {
            return Ok(Self::default());
        };
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| meta_err(&format!("not JSON ({e})")))?;
        let obj = json.as_object().ok_or_else(|| meta_err("not a JSON object"))?;
        for flag in ["use_dora", "use_rslora"] {
            if unet_entry(obj, flag).is_some_and(|v| v != &serde_json::Value::Bool(false)) {
                let what = format!("'unet.{flag}' is set; only plain LoRA (scale alpha/rank) is supported");
                return Err(meta_err(&what));
            }
        }
        let alpha = unet_entry(obj, "lora_alpha")
            .map(|v| meta_number("unet.lora_alpha", v))
            .transpose()?;
        let rank = unet_entry(obj, "r")
            .map(|v| v.as_u64().ok_or_else(|| meta_err("'unet.r' is not a whole number")))
            .transpose()?;
        Ok(Self {
            alpha,
            rank: rank.map(|r| r as usize),
            has_rank_pattern: meta_is_set(obj, "rank_pattern"),
            alpha_pattern: alpha_pattern(obj)?,
        })
    }

    /// The alpha the metadata gives `module`: an `alpha_pattern` entry naming it (exactly or
    /// as a dot-boundary suffix), else `lora_alpha`.
    fn alpha_for(&self, module: &str) -> Result<Option<f64>> {
        let hits: Vec<&(String, f64)> = (self.alpha_pattern.iter())
            .filter(|(k, _)| module == k || module.strip_suffix(k.as_str()).is_some_and(|h| h.ends_with('.')))
            .collect();
        match hits.as_slice() {
            [] => Ok(self.alpha),
            [(_, a)] => Ok(Some(*a)),
            _ => bail!("header metadata '{METADATA_KEY}': several 'unet.alpha_pattern' keys match module '{module}'"),
        }
    }

    /// `unet.r` must be the rank of every module unless a `rank_pattern` varies it.
    pub(super) fn check_rank(&self, module: &str, rank: usize) -> Result<()> {
        if let (Some(r), false) = (self.rank, self.has_rank_pattern) {
            ensure!(
                r == rank,
                "header metadata '{METADATA_KEY}' has 'unet.r' {r}, but the factors of '{module}' have rank {rank}"
            );
        }
        Ok(())
    }
}

fn parse(bytes: &[u8], unet_cfg: &UNetConfig, text_encoder: TextEncoderParts) -> Result<LoraFile> {
    let not_safetensors = |e: &dyn std::fmt::Display| anyhow!("not a safetensors file ({e})");
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| not_safetensors(&e))?;
    let meta = PeftMeta::read(header.metadata())?;
    let tensors: BTreeMap<String, Tensor> = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .map_err(|e| not_safetensors(&e))?
        .into_iter()
        .collect();
    let modules = Modules::new(unet_cfg)?;
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    let (mut layouts, mut ignored) = (BTreeSet::new(), Vec::new());
    for (key, t) in tensors {
        if is_text_encoder(&key) {
            ensure!(
                text_encoder == TextEncoderParts::Ignore,
                "key '{key}' adapts a text encoder: dcm applies only the UNet part (--lora-text-encoder ignore)"
            );
            ignored.push(key);
            continue;
        }
        let k = parse_key(&key, &modules)?;
        layouts.insert(k.layout);
        found.entry(k.module).or_default().set(k.part, &key, t)?;
    }
    ensure!(!found.is_empty(), "no LoRA tensors");
    let layout = match layouts.into_iter().collect::<Vec<_>>().as_slice() {
        [one] => *one,
        _ => LoraLayout::Mixed,
    };
    let mut checked = BTreeMap::new();
    for (module, f) in found {
        let c = check_module(&module, &modules.shapes[&module], f)?;
        checked.insert(module, c);
    }
    let mut file = assemble(checked, &meta, layout)?;
    file.ignored = ignored;
    Ok(file)
}

/// The [`LoraFile`] of checked modules: each module's alpha resolved (its own key, else the
/// PEFT metadata, else its rank), then one rank and alpha for all (see `lora_ranks`).
fn assemble(checked: BTreeMap<String, Checked>, meta: &PeftMeta, layout: LoraLayout) -> Result<LoraFile> {
    let mut alphas = BTreeMap::new();
    for (module, c) in &checked {
        meta.check_rank(module, c.rank())?;
        let alpha = match c.alpha {
            Some(a) => a,
            None => meta.alpha_for(module)?.unwrap_or(c.rank() as f64),
        };
        alphas.insert(module.clone(), alpha);
    }
    let unified = unify(checked, &alphas)?;
    let targets = (unified.params.keys())
        .filter_map(|k| k.strip_suffix(".lora_A.weight").map(str::to_string))
        .collect();
    Ok(LoraFile {
        layout,
        cfg: unified.cfg,
        targets,
        params: unified.params,
        rescaled: unified.rescaled,
        padded: unified.padded,
        ignored: Vec::new(),
    })
}

/// dcm's adapters checked as an import would check them, rank `cfg.rank`: (module, A, B) on
/// the CPU, sorted by module; every kohya name is unambiguous.
fn checked_adapters(
    unet_cfg: &UNetConfig,
    adapters: &Params,
    cfg: LoraConfig,
) -> Result<Vec<(String, Tensor, Tensor)>> {
    cfg.validate()?;
    let modules = Modules::new(unet_cfg)?;
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    for (key, t) in adapters {
        let (path, part) = match (key.strip_suffix(".lora_A.weight"), key.strip_suffix(".lora_B.weight")) {
            (Some(p), _) => (p, Part::Down),
            (_, Some(p)) => (p, Part::Up),
            _ => bail!("tensor '{key}' is not a LoRA factor (PATH.lora_A.weight / PATH.lora_B.weight)"),
        };
        let module = modules.by_path(path, key)?;
        modules.by_kohya(&kohya_name(&module), key)?;
        if let Some(ldm) = modules.ldm.to_ldm(&module) {
            modules.by_kohya(&kohya_name(&ldm), key)?;
        }
        found
            .entry(module)
            .or_default()
            .set(part, key, t.to_device(&Device::Cpu)?)?;
    }
    ensure!(!found.is_empty(), "no LoRA adapters to write");
    let mut out = Vec::new();
    for (module, f) in found {
        let c = check_module(&module, &modules.shapes[&module], f)?;
        ensure!(
            c.rank() == cfg.rank,
            "adapter of '{module}' has rank {}, but the LoRA configuration says {}",
            c.rank(),
            cfg.rank
        );
        out.push((module, c.a, c.b));
    }
    Ok(out)
}

/// Kohya's 0-d alpha: f32 as in the LCM-LoRA file, f64 where f32 would change it.
fn alpha_tensor(alpha: f64) -> Result<Tensor> {
    let t = match (alpha as f32) as f64 == alpha {
        true => Tensor::new(alpha as f32, &Device::Cpu)?,
        false => Tensor::new(alpha, &Device::Cpu)?,
    };
    Ok(t)
}

/// Alpha as diffusers' metadata writes it: an integer when it is one.
fn alpha_json(alpha: f64) -> serde_json::Value {
    match alpha.fract() == 0.0 && alpha.abs() < 9.0e15 {
        true => serde_json::json!(alpha as i64),
        false => serde_json::json!(alpha),
    }
}

/// Writes a safetensors file as the safetensors library lays it out (tensors by descending
/// dtype, then name; header padded with spaces to 8 bytes), with the metadata keys sorted.
fn write_safetensors(path: &Path, tensors: Vec<(String, Tensor)>, metadata: &BTreeMap<&str, String>) -> Result<()> {
    let metadata = metadata.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    tensor_file::write(path, tensors, &metadata)
}
