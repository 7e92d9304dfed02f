//! A safe reader for PyTorch checkpoints written by `torch.save`.
//!
//! Both on-disk layouts are understood:
//!
//! * the zip layout (the default since torch 1.6): `<dir>/data.pkl` holds the
//!   object graph, `<dir>/data/<key>` the raw storages and `<dir>/byteorder`
//!   their byte order;
//! * the legacy layout (`_use_new_zipfile_serialization=False`): a magic
//!   number pickle, a protocol version pickle, a `sys_info` pickle, the main
//!   pickle, a pickle listing the storage keys, then for every key an 8-byte
//!   element count followed by the raw storage bytes.
//!
//! Python's pickle format is a small stack machine that can call any
//! importable function, so loading an untrusted checkpoint with `pickle` runs
//! arbitrary code. This crate interprets the pickle itself and only knows a
//! handful of harmless callables (tensor rebuilding, `OrderedDict`, the typed
//! storage classes); any other global is rejected before anything is built.
//! Every size read from the file is checked against the bytes actually
//! present and the arithmetic is checked, so a hostile file yields an error
//! rather than a panic, a huge allocation or an out-of-bounds read.
//!
//! The result is flattened: nested dicts, lists and tuples become dotted keys
//! (`model.enc_1.conv.input_conv.weight`, `optimizer.param_groups.0.lr`).

#![warn(missing_docs)]

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::rc::Rc;

use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

/// Deepest container nesting accepted when flattening; real checkpoints nest
/// a handful of levels, and the bound also stops reference cycles.
const MAX_DEPTH: usize = 128;
/// Open `MARK`s at once; each nested dict/tuple literal needs one.
const MAX_MARKS: usize = 1024;
/// Memo entries per pickle.
const MAX_MEMO: usize = 1 << 22;
/// Tensor rank; torch itself caps at 64.
const MAX_NDIM: usize = 64;
/// Longest module or attribute name in a `GLOBAL` opcode.
const MAX_GLOBAL_NAME: usize = 256;
/// Memory budget (besides the input itself) for everything the reader
/// allocates in proportion to hostile sizes: decompressed entries, output
/// tensors and flattened keys. A DAG of shared containers or a stride-0 view
/// can otherwise expand a small file into an enormous output.
const BUDGET_BASE: usize = 64 << 20;
const BUDGET_PER_INPUT_BYTE: usize = 8;
/// Deflate cannot expand by more than ~1032:1, so a larger declared ratio is
/// a lie meant to make us allocate.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// The legacy format's magic number, 0x1950a86a20f9469cfc6c, as the
/// little-endian two's-complement bytes of its `LONG1` opcode.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DType {
    /// IEEE half precision (`torch.float16`, `HalfStorage`).
    F16,
    /// bfloat16 (`torch.bfloat16`, `BFloat16Storage`).
    BF16,
    /// IEEE single precision (`torch.float32`, `FloatStorage`).
    F32,
    /// IEEE double precision (`torch.float64`, `DoubleStorage`).
    F64,
    /// `torch.int64` (`LongStorage`).
    I64,
    /// `torch.int32` (`IntStorage`).
    I32,
    /// `torch.int16` (`ShortStorage`).
    I16,
    /// `torch.int8` (`CharStorage`).
    I8,
    /// `torch.uint8` (`ByteStorage`), which quantised weights use.
    U8,
    /// `torch.bool` (`BoolStorage`), one byte per element.
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    fn from_storage_name(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "DoubleStorage" => DType::F64,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }
}

/// A dense tensor copied out of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Element type, as stored in the checkpoint.
    pub dtype: DType,
    /// Size of each dimension; empty for a 0-dim tensor.
    pub shape: Vec<usize>,
    /// contiguous (row-major), little-endian
    pub data: Vec<u8>,
}

impl RawTensor {
    /// Number of elements (1 for a 0-dim tensor); saturates at `usize::MAX`
    /// for a hand-built shape whose product overflows.
    pub fn numel(&self) -> usize {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX)
    }

    /// Converts every element to `f32` (integers and `f64` round to nearest,
    /// booleans become 0 or 1).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>, PthError> {
        let expected = self.numel().checked_mul(self.dtype.size());
        if expected != Some(self.data.len()) {
            return Err(PthError::DataLengthMismatch {
                shape: self.shape.clone(),
                dtype: self.dtype,
                len: self.data.len(),
            });
        }
        let d = &self.data;
        Ok(match self.dtype {
            DType::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => d
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            DType::BF16 => d
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                .collect(),
            DType::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32)
                .collect(),
            DType::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32)
                .collect(),
            DType::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
            DType::I16 => d
                .chunks_exact(2)
                .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])))
                .collect(),
            DType::I8 => d.iter().map(|&b| f32::from(b as i8)).collect(),
            DType::U8 => d.iter().map(|&b| f32::from(b)).collect(),
            DType::Bool => d.iter().map(|&b| if b != 0 { 1.0 } else { 0.0 }).collect(),
        })
    }
}

/// IEEE binary16 to binary32; exact for every input, NaN payloads kept.
fn f16_to_f32(h: u16) -> f32 {
    let negative = h & 0x8000 != 0;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let sign = u32::from(negative) << 31;
    match exp {
        0 => {
            // Zero or subnormal: mant * 2^-24 is exact in f32.
            let v = mant as f32 * (1.0 / 16_777_216.0);
            if negative {
                -v
            } else {
                v
            }
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (mant << 13)),
        _ => f32::from_bits(sign | ((exp + 127 - 15) << 23) | (mant << 13)),
    }
}

/// A non-tensor leaf of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// A Python `int` that fits in 64 bits.
    Int(i64),
    /// A Python `float`.
    Float(f64),
    /// A Python `bool`.
    Bool(bool),
    /// A Python `str`.
    Str(String),
    /// Python's `None`.
    None,
}

/// A checkpoint flattened: nested dicts joined with '.', e.g.
/// `"model.enc_1.conv.input_conv.weight"`; list/tuple elements use their
/// index as the key part and integer dict keys are written in decimal. A
/// checkpoint that is a bare tensor or scalar is stored under the key `""`.
/// Byte strings are not representable and are skipped.
#[derive(Debug, Clone, Default)]
pub struct PthFile {
    /// Every tensor, by dotted key.
    pub tensors: BTreeMap<String, RawTensor>,
    /// Every non-tensor leaf (step counts, hyper-parameters, names), by dotted key.
    pub scalars: BTreeMap<String, Scalar>,
}

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PthError {
    /// The pickle names a global outside the allow-list; loading it with
    /// Python would import and possibly call it.
    #[error(
        "forbidden pickle global `{module}.{name}`: checkpoints may only contain tensors and dicts"
    )]
    ForbiddenGlobal {
        /// The module part of the global, e.g. `os`.
        module: String,
        /// The attribute part, e.g. `system`.
        name: String,
    },
    /// An opcode this reader does not implement (or that does not exist).
    #[error("unsupported pickle opcode 0x{opcode:02x} ({name}) at byte {offset}")]
    UnsupportedOpcode {
        /// The opcode byte.
        opcode: u8,
        /// Its name in Python's `pickletools`, or `unknown`.
        name: &'static str,
        /// Where it sits in the pickle.
        offset: usize,
    },
    /// The pickle asks for a protocol newer than 5.
    #[error("unsupported pickle protocol {0}")]
    UnsupportedProtocol(u8),
    /// The data ended in the middle of an opcode or before `STOP`.
    #[error("truncated checkpoint: {what} runs past the end of the data at byte {offset}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it began.
        offset: usize,
    },
    /// An opcode needed more stack items than the current mark frame holds.
    #[error("malformed pickle: `{opcode}` at byte {offset} pops from an empty stack")]
    StackUnderflow {
        /// The opcode's name.
        opcode: &'static str,
        /// Where it sits in the pickle.
        offset: usize,
    },
    /// An opcode that consumes a `MARK` found none.
    #[error("malformed pickle: `{opcode}` at byte {offset} has no matching MARK")]
    MissingMark {
        /// The opcode's name.
        opcode: &'static str,
        /// Where it sits in the pickle.
        offset: usize,
    },
    /// More `MARK`s were open at once than `MAX_MARKS`.
    #[error("pickle nests more than {MAX_MARKS} MARKs")]
    TooManyMarks,
    /// `BINGET`/`LONG_BINGET` referred to a memo slot never written.
    #[error("malformed pickle: memo slot {0} read before it was written")]
    MemoMissing(u32),
    /// More memo entries than `MAX_MEMO`.
    #[error("pickle memo exceeds {MAX_MEMO} entries")]
    MemoTooLarge,
    /// Containers nest deeper than `MAX_DEPTH` (or refer to themselves).
    #[error("checkpoint nests containers deeper than {MAX_DEPTH} levels (or contains a cycle)")]
    NestingTooDeep,
    /// A value had the wrong type for where it was used.
    #[error("malformed checkpoint: {context} expects {expected}, found {found}")]
    UnexpectedType {
        /// Where the value was used.
        context: &'static str,
        /// The type that place takes.
        expected: &'static str,
        /// The type the pickle gave.
        found: &'static str,
    },
    /// A known callable got the wrong number of arguments.
    #[error("malformed checkpoint: `{callable}` takes {expected} arguments, got {found}")]
    BadArity {
        /// The callable, e.g. `torch._utils._rebuild_tensor_v2`.
        callable: &'static str,
        /// The argument counts it takes.
        expected: &'static str,
        /// The count the pickle gave.
        found: usize,
    },
    /// A string in the pickle is not valid UTF-8.
    #[error("pickle string at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Where the string begins.
        offset: usize,
    },
    /// A length or integer is negative where only non-negative makes sense.
    #[error("malformed checkpoint: negative {what} ({value})")]
    Negative {
        /// What the number is (a length, an offset, ...).
        what: &'static str,
        /// The number.
        value: i64,
    },
    /// An integer does not fit in 64 bits.
    #[error("integer at `{key}` does not fit in 64 bits")]
    IntegerTooLarge {
        /// The dotted key of the integer.
        key: String,
    },
    /// A dict key is not a string, int, bool or None.
    #[error("unsupported dict key of type {found}: keys must be str, int, bool or None")]
    UnsupportedDictKey {
        /// The key's Python type.
        found: &'static str,
    },
    /// A value that is neither a container, tensor nor scalar.
    #[error("unsupported value of type {found} at `{key}`")]
    UnsupportedValue {
        /// The dotted key of the value.
        key: String,
        /// The value's Python type.
        found: &'static str,
    },
    /// Two values flatten to the same dotted key.
    #[error("two values flatten to the same key `{0}`")]
    DuplicateKey(String),
    /// A persistent id other than a torch storage reference.
    #[error("unsupported persistent id: {0}")]
    UnsupportedPersistentId(String),
    /// One storage key was declared with two different types or sizes.
    #[error("storage `{key}` is declared with conflicting types or sizes")]
    StorageConflict {
        /// The storage key.
        key: String,
    },
    /// A tensor refers to a storage that the file does not contain.
    #[error("tensor refers to storage `{key}`, which is not in the checkpoint")]
    MissingStorage {
        /// The storage key.
        key: String,
    },
    /// The legacy storage table lists a key that no tensor declared.
    #[error("legacy storage table lists `{key}`, which the pickle never declared")]
    UnknownStorageKey {
        /// The storage key.
        key: String,
    },
    /// A storage's bytes do not match its declared element count.
    #[error("storage `{key}` should hold {expected} bytes but holds {actual}")]
    StorageSizeMismatch {
        /// The storage key.
        key: String,
        /// Bytes its declaration implies.
        expected: u64,
        /// Bytes the file holds.
        actual: u64,
    },
    /// A tensor view reaches past the end of its storage.
    #[error(
        "tensor view needs {needed} elements of storage `{key}`, which holds only {available}"
    )]
    ViewOutOfBounds {
        /// The storage key.
        key: String,
        /// Elements the view's offset, sizes and strides reach.
        needed: u128,
        /// Elements the storage holds.
        available: usize,
    },
    /// A tensor has more than `MAX_NDIM` dimensions.
    #[error("tensor has {0} dimensions; at most {MAX_NDIM} are supported")]
    TooManyDims(usize),
    /// `size` and `stride` of a tensor have different lengths.
    #[error("tensor size has {size} dimensions but stride has {stride}")]
    StrideRankMismatch {
        /// Dimensions in `size`.
        size: usize,
        /// Dimensions in `stride`.
        stride: usize,
    },
    /// Size arithmetic overflowed.
    #[error("tensor or storage size overflows: {0}")]
    SizeOverflow(&'static str),
    /// Producing the result would allocate more than the reader's budget.
    #[error("checkpoint expands to more than {limit} bytes in memory; refusing to allocate")]
    OutputTooLarge {
        /// The budget, in bytes.
        limit: usize,
    },
    /// A [`RawTensor`]'s data length does not match its shape and dtype.
    #[error("tensor data holds {len} bytes, which does not match shape {shape:?} of {dtype:?}")]
    DataLengthMismatch {
        /// The tensor's shape.
        shape: Vec<usize>,
        /// The tensor's element type.
        dtype: DType,
        /// Bytes of data it holds.
        len: usize,
    },
    /// The input is neither a zip archive nor a legacy pickle stream.
    #[error(
        "not a torch checkpoint: neither a zip archive nor a legacy pickle \
         (tar checkpoints from torch < 0.4 are not supported)"
    )]
    UnknownFormat,
    /// The legacy format's leading magic number is wrong.
    #[error("not a torch checkpoint: legacy magic number mismatch")]
    BadMagic,
    /// The legacy format's protocol version is not 1001.
    #[error("unsupported legacy checkpoint protocol version {0} (expected 1001)")]
    UnsupportedLegacyVersion(i64),
    /// The zip archive is malformed.
    #[error("invalid zip archive: {0}")]
    Zip(#[from] ZipError),
    /// No `<dir>/data.pkl` entry in the zip archive.
    #[error("zip archive has no `<dir>/data.pkl` entry: not a torch.save checkpoint")]
    MissingDataPkl,
    /// More than one `<dir>/data.pkl` entry in the zip archive.
    #[error("zip archive has several `<dir>/data.pkl` entries: {0} and {1}")]
    AmbiguousDataPkl(String, String),
    /// A zip entry could not be decompressed.
    #[error("failed to read zip entry `{name}`: {source}")]
    ZipRead {
        /// The entry's name in the archive.
        name: String,
        /// What the decompressor reported.
        source: std::io::Error,
    },
    /// A zip entry claims to decompress to an impossible size.
    #[error("zip entry `{name}` claims {size} bytes from {compressed} compressed bytes")]
    ImplausibleEntrySize {
        /// The entry's name in the archive.
        name: String,
        /// The decompressed size it declares.
        size: u64,
        /// Its compressed size.
        compressed: u64,
    },
    /// The `byteorder` record is neither `little` nor `big`.
    #[error("unsupported storage byte order `{0}`")]
    UnsupportedByteOrder(String),
}

type Result<T, E = PthError> = std::result::Result<T, E>;

/// Reads a checkpoint from the bytes of a file written by `torch.save`.
pub fn read_pth(bytes: &[u8]) -> Result<PthFile> {
    let mut budget = Budget::new(bytes.len());
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        read_zip(bytes, &mut budget)
    } else if bytes.first() == Some(&PROTO) {
        read_legacy(bytes, &mut budget)
    } else {
        Err(PthError::UnknownFormat)
    }
}

struct Budget {
    left: usize,
    limit: usize,
}

impl Budget {
    fn new(input_len: usize) -> Budget {
        let limit = input_len
            .saturating_mul(BUDGET_PER_INPUT_BYTE)
            .saturating_add(BUDGET_BASE);
        Budget { left: limit, limit }
    }

    fn charge(&mut self, n: usize) -> Result<()> {
        self.left = self
            .left
            .checked_sub(n)
            .ok_or(PthError::OutputTooLarge { limit: self.limit })?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Container formats
// ---------------------------------------------------------------------------

fn read_zip(bytes: &[u8], budget: &mut Budget) -> Result<PthFile> {
    let mut archive = ZipArchive::new(Cursor::new(bytes))?;
    let mut pkl_name: Option<String> = None;
    for name in archive.file_names() {
        if let Some(dir) = name.strip_suffix("/data.pkl") {
            if !dir.is_empty() && !dir.contains('/') {
                if let Some(prev) = &pkl_name {
                    return Err(PthError::AmbiguousDataPkl(prev.clone(), name.to_string()));
                }
                pkl_name = Some(name.to_string());
            }
        }
    }
    let pkl_name = pkl_name.ok_or(PthError::MissingDataPkl)?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];

    let big_endian = match zip_entry(&mut archive, bytes, &format!("{prefix}byteorder"), budget) {
        Ok(order) => match &order[..] {
            b"little" => false,
            b"big" => true,
            other => {
                return Err(PthError::UnsupportedByteOrder(
                    String::from_utf8_lossy(other).into_owned(),
                ))
            }
        },
        // Files written before the record existed are little-endian.
        Err(PthError::Zip(ZipError::FileNotFound)) => false,
        Err(e) => return Err(e),
    };

    let pkl = zip_entry(&mut archive, bytes, &pkl_name, budget)?;
    let mut storages = StorageTable::default();
    let (flat, _) = parse_pickle(&pkl, true, &mut storages, |root| flatten_root(root, budget))?;

    let mut data: HashMap<String, Cow<[u8]>> = HashMap::new();
    for (key, decl) in &storages.decls {
        let expected = decl.nbytes()?;
        let name = format!("{prefix}data/{key}");
        let raw = match zip_entry(&mut archive, bytes, &name, budget) {
            Err(PthError::Zip(ZipError::FileNotFound)) => {
                return Err(PthError::MissingStorage { key: key.clone() })
            }
            other => other?,
        };
        if raw.len() as u64 != expected as u64 {
            return Err(PthError::StorageSizeMismatch {
                key: key.clone(),
                expected: expected as u64,
                actual: raw.len() as u64,
            });
        }
        let raw = if big_endian {
            budget.charge(raw.len())?;
            Cow::Owned(swap_bytes(&raw, decl.dtype.size()))
        } else {
            raw
        };
        data.insert(key.clone(), raw);
    }
    materialize(flat, &data, budget)
}

/// Returns an entry's bytes, borrowed straight from the input when stored
/// uncompressed (which is what torch writes).
fn zip_entry<'a>(
    archive: &mut ZipArchive<Cursor<&'a [u8]>>,
    bytes: &'a [u8],
    name: &str,
    budget: &mut Budget,
) -> Result<Cow<'a, [u8]>> {
    let mut file = archive.by_name(name)?;
    let size = file.size();
    let compressed = file.compressed_size();
    let implausible = || PthError::ImplausibleEntrySize {
        name: name.to_string(),
        size,
        compressed,
    };
    if file.compression() == CompressionMethod::Stored {
        if size != compressed {
            return Err(implausible());
        }
        let start = usize::try_from(file.data_start()).map_err(|_| implausible())?;
        let len = usize::try_from(size).map_err(|_| implausible())?;
        let end = start.checked_add(len).ok_or_else(implausible)?;
        return bytes
            .get(start..end)
            .map(Cow::Borrowed)
            .ok_or_else(implausible);
    }
    if size
        > compressed
            .saturating_mul(MAX_DEFLATE_RATIO)
            .saturating_add(1024)
    {
        return Err(implausible());
    }
    let len = usize::try_from(size).map_err(|_| implausible())?;
    budget.charge(len)?;
    let mut out = Vec::with_capacity(len);
    (&mut file)
        .take(size)
        .read_to_end(&mut out)
        .map_err(|source| PthError::ZipRead {
            name: name.to_string(),
            source,
        })?;
    if out.len() != len {
        return Err(PthError::ZipRead {
            name: name.to_string(),
            source: std::io::ErrorKind::UnexpectedEof.into(),
        });
    }
    Ok(Cow::Owned(out))
}

fn read_legacy(bytes: &[u8], budget: &mut Budget) -> Result<PthFile> {
    let mut storages = StorageTable::default();
    let mut pos = 0;

    let (magic_ok, used) = parse_pickle(bytes, false, &mut storages, |v| {
        Ok(matches!(v, Value::BigInt(b) if b[..] == LEGACY_MAGIC))
    })?;
    if !magic_ok {
        return Err(PthError::BadMagic);
    }
    pos += used;

    let (version, used) = parse_pickle(&bytes[pos..], false, &mut storages, |v| match v {
        Value::Int(i) => Ok(*i),
        other => Err(unexpected("legacy protocol version", "int", other)),
    })?;
    if version != LEGACY_PROTOCOL_VERSION {
        return Err(PthError::UnsupportedLegacyVersion(version));
    }
    pos += used;

    let (big_endian, used) = parse_pickle(&bytes[pos..], false, &mut storages, |v| {
        let Value::Dict(d) = v else {
            return Err(unexpected("legacy sys_info", "dict", v));
        };
        let d = d.borrow();
        Ok(matches!(d.get("little_endian"), Some(Value::Bool(false))))
    })?;
    pos += used;

    let (flat, used) = parse_pickle(&bytes[pos..], true, &mut storages, |root| {
        flatten_root(root, budget)
    })?;
    pos += used;

    let (keys, used) = parse_pickle(&bytes[pos..], false, &mut storages, |v| {
        let items = match v {
            Value::List(l) | Value::Tuple(l) => l.borrow(),
            other => return Err(unexpected("legacy storage key list", "list", other)),
        };
        items
            .iter()
            .map(|k| match k {
                Value::Str(s) => Ok(s.to_string()),
                other => Err(unexpected("legacy storage key", "str", other)),
            })
            .collect::<Result<Vec<String>>>()
    })?;
    pos += used;

    let mut r = Reader::new(&bytes[pos..]);
    let mut data: HashMap<String, Cow<[u8]>> = HashMap::new();
    for key in keys {
        let decl = storages
            .decls
            .get(&key)
            .ok_or_else(|| PthError::UnknownStorageKey { key: key.clone() })?;
        let count_bytes: [u8; 8] = r.take(8, "legacy storage length")?.try_into().expect("8");
        let count = if big_endian {
            u64::from_be_bytes(count_bytes)
        } else {
            u64::from_le_bytes(count_bytes)
        };
        let expected = decl.nbytes()?;
        let size = count
            .checked_mul(decl.dtype.size() as u64)
            .ok_or(PthError::SizeOverflow("legacy storage length"))?;
        if size != expected as u64 {
            return Err(PthError::StorageSizeMismatch {
                key,
                expected: expected as u64,
                actual: size,
            });
        }
        let raw = r.take(expected, "legacy storage data")?;
        let raw = if big_endian {
            budget.charge(raw.len())?;
            Cow::Owned(swap_bytes(raw, decl.dtype.size()))
        } else {
            Cow::Borrowed(raw)
        };
        data.insert(key, raw);
    }
    materialize(flat, &data, budget)
}

fn swap_bytes(raw: &[u8], elem: usize) -> Vec<u8> {
    let mut out = raw.to_vec();
    if elem > 1 {
        for chunk in out.chunks_exact_mut(elem) {
            chunk.reverse();
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------

type Seq = Rc<RefCell<Vec<Value>>>;

/// A Python value as far as checkpoints need one. Containers are shared and
/// mutable because pickle memoizes a dict before filling it.
#[derive(Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// A `LONG1`/`LONG4` integer wider than 64 bits, as two's-complement LE.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes,
    List(Seq),
    Tuple(Seq),
    Dict(Rc<RefCell<Dict>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorSpec>),
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) | Value::BigInt(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Bytes => "bytes",
        Value::List(_) => "list",
        Value::Tuple(_) => "tuple",
        Value::Dict(_) => "dict",
        Value::Global(_) => "global",
        Value::Storage(_) => "storage",
        Value::Tensor(_) => "tensor",
    }
}

fn unexpected(context: &'static str, expected: &'static str, found: &Value) -> PthError {
    PthError::UnexpectedType {
        context,
        expected,
        found: type_name(found),
    }
}

/// Dict keys are stringified on insertion: the flattened output needs
/// strings anyway, and this keeps lookup O(1) without hashing `Value`s.
#[derive(Default)]
struct Dict {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Dict {
    fn insert(&mut self, key: &Value, value: Value) -> Result<()> {
        let key = match key {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Bool(true) => "True".to_string(),
            Value::Bool(false) => "False".to_string(),
            Value::None => "None".to_string(),
            other => {
                return Err(PthError::UnsupportedDictKey {
                    found: type_name(other),
                })
            }
        };
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
            }
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }
}

#[derive(Clone, Copy)]
enum Global {
    RebuildTensor,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    OrderedDict,
    Storage(DType),
}

fn lookup_global(module: &str, name: &str) -> Result<Global> {
    let g = match (module, name) {
        ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => {
            Some(Global::RebuildParameterWithState)
        }
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch", storage) => DType::from_storage_name(storage).map(Global::Storage),
        _ => None,
    };
    g.ok_or_else(|| PthError::ForbiddenGlobal {
        module: module.to_string(),
        name: name.to_string(),
    })
}

/// A reference to (a window of) a storage, from a persistent id.
struct StorageRef {
    key: String,
    dtype: DType,
    /// Element offset of this window in the root storage (legacy views).
    offset: usize,
    numel: usize,
}

/// Storage declarations collected while unpickling, by key.
#[derive(Default)]
struct StorageTable {
    decls: BTreeMap<String, StorageDecl>,
}

#[derive(Clone, Copy, PartialEq)]
struct StorageDecl {
    dtype: DType,
    numel: usize,
}

impl StorageDecl {
    fn nbytes(&self) -> Result<usize> {
        self.numel
            .checked_mul(self.dtype.size())
            .ok_or(PthError::SizeOverflow("storage byte size"))
    }
}

/// A tensor waiting for its storage bytes, which in the legacy format come
/// after the pickle.
struct TensorSpec {
    storage: Rc<StorageRef>,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

// ---------------------------------------------------------------------------
// Unpickler
// ---------------------------------------------------------------------------

const MARK: u8 = b'(';
const STOP: u8 = b'.';
const POP: u8 = b'0';
const POP_MARK: u8 = b'1';
const DUP: u8 = b'2';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const NONE: u8 = b'N';
const BINPERSID: u8 = b'Q';
const REDUCE: u8 = b'R';
const BINSTRING: u8 = b'T';
const SHORT_BINSTRING: u8 = b'U';
const BINUNICODE: u8 = b'X';
const APPEND: u8 = b'a';
const BUILD: u8 = b'b';
const GLOBAL: u8 = b'c';
const DICT: u8 = b'd';
const EMPTY_DICT: u8 = b'}';
const APPENDS: u8 = b'e';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const LIST: u8 = b'l';
const EMPTY_LIST: u8 = b']';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const SETITEM: u8 = b's';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const SETITEMS: u8 = b'u';
const BINFLOAT: u8 = b'G';
const PROTO: u8 = 0x80;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BINBYTES8: u8 = 0x8e;
const STACK_GLOBAL: u8 = 0x93;
const MEMOIZE: u8 = 0x94;
const FRAME: u8 = 0x95;

/// Names of the opcodes this reader refuses, for error messages.
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'I' => "INT",
        b'L' => "LONG",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'F' => "FLOAT",
        b'g' => "GET",
        b'p' => "PUT",
        b'P' => "PERSID",
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or(PthError::Truncated {
                what,
                offset: self.pos,
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn take_u64_len(&mut self, n: u64, what: &'static str) -> Result<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| PthError::Truncated {
            what,
            offset: self.pos,
        })?;
        self.take(n, what)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("exact length"))
    }

    fn line(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let rest = &self.data[self.pos..];
        let window = &rest[..rest.len().min(MAX_GLOBAL_NAME + 1)];
        match window.iter().position(|&b| b == b'\n') {
            Some(n) => {
                let s = &rest[..n];
                self.pos += n + 1;
                Ok(s)
            }
            None if rest.len() > MAX_GLOBAL_NAME => Err(PthError::UnexpectedType {
                context: what,
                expected: "a name shorter than 256 bytes",
                found: "a longer line",
            }),
            None => Err(PthError::Truncated {
                what,
                offset: self.data.len(),
            }),
        }
    }
}

fn utf8(bytes: &[u8], offset: usize) -> Result<Rc<str>> {
    std::str::from_utf8(bytes)
        .map(Rc::from)
        .map_err(|_| PthError::InvalidUtf8 { offset })
}

/// Decodes a `LONG1`/`LONG4` payload (little-endian two's complement).
fn decode_long(bytes: &[u8]) -> Value {
    if bytes.len() > 8 {
        return Value::BigInt(Rc::from(bytes));
    }
    let Some(&last) = bytes.last() else {
        return Value::Int(0);
    };
    let mut buf = if last & 0x80 != 0 { [0xff; 8] } else { [0; 8] };
    buf[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(buf))
}

struct Unpickler<'a, 's> {
    r: Reader<'a>,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Every container created, so `Drop` can empty them one by one: that
    /// breaks reference cycles (which would leak) and avoids recursive drops
    /// of deeply nested values (which would overflow the stack).
    containers: Vec<Value>,
    allow_persid: bool,
    storages: &'s mut StorageTable,
    /// Offset of the opcode being executed, for error messages.
    op_pos: usize,
}

impl Drop for Unpickler<'_, '_> {
    fn drop(&mut self) {
        self.stack.clear();
        self.memo.clear();
        for c in &self.containers {
            match c {
                Value::List(s) | Value::Tuple(s) => {
                    if let Ok(mut v) = s.try_borrow_mut() {
                        drop(std::mem::take(&mut *v));
                    }
                }
                Value::Dict(d) => {
                    if let Ok(mut d) = d.try_borrow_mut() {
                        drop(std::mem::take(&mut *d));
                    }
                }
                _ => {}
            }
        }
    }
}

/// Runs one pickle from the start of `data` and hands its result to `f`
/// while the unpickler (which owns the containers) is still alive. Returns
/// `f`'s result and the number of bytes the pickle took.
fn parse_pickle<T>(
    data: &[u8],
    allow_persid: bool,
    storages: &mut StorageTable,
    f: impl FnOnce(&Value) -> Result<T>,
) -> Result<(T, usize)> {
    let mut u = Unpickler {
        r: Reader::new(data),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        containers: Vec::new(),
        allow_persid,
        storages,
        op_pos: 0,
    };
    let root = u.run()?;
    let out = f(&root)?;
    Ok((out, u.r.pos))
}

impl Unpickler<'_, '_> {
    fn run(&mut self) -> Result<Value> {
        loop {
            self.op_pos = self.r.pos;
            let op = self.r.u8("pickle opcode (no STOP)")?;
            match op {
                PROTO => {
                    let v = self.r.u8("PROTO")?;
                    if v > 5 {
                        return Err(PthError::UnsupportedProtocol(v));
                    }
                }
                // Frames only help buffered readers; the data is all here.
                FRAME => {
                    self.r.take(8, "FRAME")?;
                }
                STOP => return self.pop("STOP"),
                MARK => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(PthError::TooManyMarks);
                    }
                    self.marks.push(self.stack.len());
                }
                POP => {
                    if self.stack.len() == self.frame_base() && !self.marks.is_empty() {
                        self.marks.pop();
                    } else {
                        self.pop("POP")?;
                    }
                }
                POP_MARK => {
                    self.pop_mark("POP_MARK")?;
                }
                DUP => {
                    let v = self.top("DUP")?.clone();
                    self.stack.push(v);
                }
                NONE => self.stack.push(Value::None),
                NEWTRUE => self.stack.push(Value::Bool(true)),
                NEWFALSE => self.stack.push(Value::Bool(false)),
                BININT => {
                    let v = i32::from_le_bytes(self.r.array("BININT")?);
                    self.stack.push(Value::Int(v.into()));
                }
                BININT1 => {
                    let v = self.r.u8("BININT1")?;
                    self.stack.push(Value::Int(v.into()));
                }
                BININT2 => {
                    let v = u16::from_le_bytes(self.r.array("BININT2")?);
                    self.stack.push(Value::Int(v.into()));
                }
                LONG1 => {
                    let n = self.r.u8("LONG1")?;
                    let v = decode_long(self.r.take(n.into(), "LONG1")?);
                    self.stack.push(v);
                }
                LONG4 => {
                    let n = i32::from_le_bytes(self.r.array("LONG4")?);
                    let n = usize::try_from(n).map_err(|_| PthError::Negative {
                        what: "LONG4 length",
                        value: n.into(),
                    })?;
                    let v = decode_long(self.r.take(n, "LONG4")?);
                    self.stack.push(v);
                }
                BINFLOAT => {
                    let v = f64::from_be_bytes(self.r.array("BINFLOAT")?);
                    self.stack.push(Value::Float(v));
                }
                SHORT_BINUNICODE | SHORT_BINSTRING => {
                    let n = self.r.u8("short string length")?;
                    self.push_str(n.into())?;
                }
                BINUNICODE => {
                    let n = u32::from_le_bytes(self.r.array("BINUNICODE")?);
                    self.push_str(n.into())?;
                }
                BINUNICODE8 => {
                    let n = u64::from_le_bytes(self.r.array("BINUNICODE8")?);
                    self.push_str(n)?;
                }
                // Python 2 `str`; torch.load decodes it as UTF-8.
                BINSTRING => {
                    let n = i32::from_le_bytes(self.r.array("BINSTRING")?);
                    let n = u64::try_from(n).map_err(|_| PthError::Negative {
                        what: "BINSTRING length",
                        value: n.into(),
                    })?;
                    self.push_str(n)?;
                }
                SHORT_BINBYTES => {
                    let n = self.r.u8("SHORT_BINBYTES")?;
                    self.r.take(n.into(), "SHORT_BINBYTES")?;
                    self.stack.push(Value::Bytes);
                }
                BINBYTES => {
                    let n = u32::from_le_bytes(self.r.array("BINBYTES")?);
                    self.r.take_u64_len(n.into(), "BINBYTES")?;
                    self.stack.push(Value::Bytes);
                }
                BINBYTES8 => {
                    let n = u64::from_le_bytes(self.r.array("BINBYTES8")?);
                    self.r.take_u64_len(n, "BINBYTES8")?;
                    self.stack.push(Value::Bytes);
                }
                EMPTY_DICT => {
                    let d = self.new_dict();
                    self.stack.push(d);
                }
                EMPTY_LIST => {
                    let l = self.new_seq(Vec::new(), false);
                    self.stack.push(l);
                }
                EMPTY_TUPLE => {
                    let t = self.new_seq(Vec::new(), true);
                    self.stack.push(t);
                }
                TUPLE => {
                    let items = self.pop_mark("TUPLE")?;
                    let t = self.new_seq(items, true);
                    self.stack.push(t);
                }
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let n = usize::from(op - TUPLE1 + 1);
                    let base = self.frame_base();
                    if self.stack.len() < base + n {
                        return Err(self.underflow("TUPLE1/2/3"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    let t = self.new_seq(items, true);
                    self.stack.push(t);
                }
                LIST => {
                    let items = self.pop_mark("LIST")?;
                    let l = self.new_seq(items, false);
                    self.stack.push(l);
                }
                DICT => {
                    let items = self.pop_mark("DICT")?;
                    let d = self.new_dict();
                    self.set_items(&d, items, "DICT")?;
                    self.stack.push(d);
                }
                BINPUT => {
                    let i = self.r.u8("BINPUT")?;
                    self.memo_put(i.into())?;
                }
                LONG_BINPUT => {
                    let i = u32::from_le_bytes(self.r.array("LONG_BINPUT")?);
                    self.memo_put(i)?;
                }
                MEMOIZE => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| PthError::MemoTooLarge)?;
                    self.memo_put(i)?;
                }
                BINGET => {
                    let i = self.r.u8("BINGET")?;
                    self.memo_get(i.into())?;
                }
                LONG_BINGET => {
                    let i = u32::from_le_bytes(self.r.array("LONG_BINGET")?);
                    self.memo_get(i)?;
                }
                GLOBAL => {
                    let at = self.r.pos;
                    let module = utf8(self.r.line("GLOBAL module")?, at)?;
                    let at = self.r.pos;
                    let name = utf8(self.r.line("GLOBAL name")?, at)?;
                    let g = lookup_global(&module, &name)?;
                    self.stack.push(Value::Global(g));
                }
                STACK_GLOBAL => {
                    let name = self.pop("STACK_GLOBAL")?;
                    let module = self.pop("STACK_GLOBAL")?;
                    let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                        return Err(PthError::UnexpectedType {
                            context: "STACK_GLOBAL",
                            expected: "two strings",
                            found: type_name(&name),
                        });
                    };
                    let g = lookup_global(module, name)?;
                    self.stack.push(Value::Global(g));
                }
                REDUCE => {
                    let args = self.pop("REDUCE")?;
                    let callable = self.pop("REDUCE")?;
                    let v = self.reduce(&callable, &args)?;
                    self.stack.push(v);
                }
                // Only `OrderedDict` instance attributes (a state_dict's
                // `_metadata`) and parameter state reach BUILD in torch
                // output; neither affects the tensors, so the state is dropped.
                BUILD => {
                    let _state = self.pop("BUILD")?;
                    match self.top("BUILD")? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => return Err(unexpected("BUILD", "dict or tensor", other)),
                    }
                }
                SETITEM => {
                    let value = self.pop("SETITEM")?;
                    let key = self.pop("SETITEM")?;
                    let target = self.top("SETITEM")?.clone();
                    self.set_items(&target, vec![key, value], "SETITEM")?;
                }
                SETITEMS => {
                    let items = self.pop_mark("SETITEMS")?;
                    let target = self.top("SETITEMS")?.clone();
                    self.set_items(&target, items, "SETITEMS")?;
                }
                APPEND => {
                    let value = self.pop("APPEND")?;
                    match self.top("APPEND")? {
                        Value::List(l) => l.borrow_mut().push(value),
                        other => return Err(unexpected("APPEND", "list", other)),
                    }
                }
                APPENDS => {
                    let items = self.pop_mark("APPENDS")?;
                    match self.top("APPENDS")? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        other => return Err(unexpected("APPENDS", "list", other)),
                    }
                }
                BINPERSID => {
                    let pid = self.pop("BINPERSID")?;
                    let v = self.persistent_load(&pid)?;
                    self.stack.push(v);
                }
                other => {
                    return Err(PthError::UnsupportedOpcode {
                        opcode: other,
                        name: opcode_name(other),
                        offset: self.op_pos,
                    })
                }
            }
        }
    }

    fn frame_base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn underflow(&self, opcode: &'static str) -> PthError {
        PthError::StackUnderflow {
            opcode,
            offset: self.op_pos,
        }
    }

    /// Pops within the current mark frame, like CPython's split stack.
    fn pop(&mut self, opcode: &'static str) -> Result<Value> {
        if self.stack.len() <= self.frame_base() {
            return Err(self.underflow(opcode));
        }
        Ok(self.stack.pop().expect("non-empty"))
    }

    fn top(&self, opcode: &'static str) -> Result<&Value> {
        if self.stack.len() <= self.frame_base() {
            return Err(self.underflow(opcode));
        }
        Ok(self.stack.last().expect("non-empty"))
    }

    fn pop_mark(&mut self, opcode: &'static str) -> Result<Vec<Value>> {
        let base = self.marks.pop().ok_or(PthError::MissingMark {
            opcode,
            offset: self.op_pos,
        })?;
        Ok(self.stack.split_off(base))
    }

    fn push_str(&mut self, n: u64) -> Result<()> {
        let at = self.r.pos;
        let s = utf8(self.r.take_u64_len(n, "string")?, at)?;
        self.stack.push(Value::Str(s));
        Ok(())
    }

    fn new_seq(&mut self, items: Vec<Value>, tuple: bool) -> Value {
        let s = Rc::new(RefCell::new(items));
        let v = if tuple {
            Value::Tuple(s)
        } else {
            Value::List(s)
        };
        self.containers.push(v.clone());
        v
    }

    fn new_dict(&mut self) -> Value {
        let v = Value::Dict(Rc::default());
        self.containers.push(v.clone());
        v
    }

    fn memo_put(&mut self, i: u32) -> Result<()> {
        let v = self.top("BINPUT")?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&i) {
            return Err(PthError::MemoTooLarge);
        }
        self.memo.insert(i, v);
        Ok(())
    }

    fn memo_get(&mut self, i: u32) -> Result<()> {
        let v = self.memo.get(&i).ok_or(PthError::MemoMissing(i))?.clone();
        self.stack.push(v);
        Ok(())
    }

    fn set_items(&self, target: &Value, items: Vec<Value>, opcode: &'static str) -> Result<()> {
        let Value::Dict(d) = target else {
            return Err(unexpected(opcode, "dict", target));
        };
        if !items.len().is_multiple_of(2) {
            return Err(PthError::UnexpectedType {
                context: opcode,
                expected: "key/value pairs",
                found: "an odd number of items",
            });
        }
        let mut d = d.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.insert(&k, v)?;
        }
        Ok(())
    }

    fn reduce(&mut self, callable: &Value, args: &Value) -> Result<Value> {
        let Value::Global(g) = callable else {
            return Err(unexpected("REDUCE", "an allowed global", callable));
        };
        let Value::Tuple(args) = args else {
            return Err(unexpected("REDUCE arguments", "tuple", args));
        };
        let args = args.borrow().clone();
        let arity = |name: &'static str, expected: &'static str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(PthError::BadArity {
                    callable: name,
                    expected,
                    found: args.len(),
                })
            }
        };
        match *g {
            Global::OrderedDict => {
                arity("collections.OrderedDict", "0 or 1", args.len() <= 1)?;
                let d = self.new_dict();
                if let Some(pairs) = args.first() {
                    let (Value::List(pairs) | Value::Tuple(pairs)) = pairs else {
                        return Err(unexpected("OrderedDict()", "a list of pairs", pairs));
                    };
                    for pair in pairs.borrow().iter() {
                        match pair {
                            Value::Tuple(p) | Value::List(p) if p.borrow().len() == 2 => {
                                let p = p.borrow();
                                self.set_items(&d, vec![p[0].clone(), p[1].clone()], "REDUCE")?;
                            }
                            other => return Err(unexpected("OrderedDict()", "a pair", other)),
                        }
                    }
                }
                Ok(d)
            }
            Global::RebuildTensor => {
                arity("torch._utils._rebuild_tensor", "4", args.len() == 4)?;
                rebuild_tensor(&args)
            }
            Global::RebuildTensorV2 => {
                arity(
                    "torch._utils._rebuild_tensor_v2",
                    "6 or 7",
                    args.len() == 6 || args.len() == 7,
                )?;
                rebuild_tensor(&args)
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let (name, n) = match g {
                    Global::RebuildParameter => ("torch._utils._rebuild_parameter", 3),
                    _ => ("torch._utils._rebuild_parameter_with_state", 4),
                };
                arity(name, if n == 3 { "3" } else { "4" }, args.len() == n)?;
                match &args[0] {
                    t @ Value::Tensor(_) => Ok(t.clone()),
                    other => Err(unexpected("_rebuild_parameter data", "tensor", other)),
                }
            }
            Global::Storage(_) => Err(PthError::UnexpectedType {
                context: "REDUCE",
                expected: "a callable",
                found: "a storage type",
            }),
        }
    }

    /// `('storage', storage_type, key, location, numel[, view_metadata])`
    fn persistent_load(&mut self, pid: &Value) -> Result<Value> {
        let describe = || format!("a {} at byte {}", type_name(pid), self.op_pos);
        if !self.allow_persid {
            return Err(PthError::UnsupportedPersistentId(describe()));
        }
        let Value::Tuple(items) = pid else {
            return Err(PthError::UnsupportedPersistentId(describe()));
        };
        let items = items.borrow();
        let tag = match items.first() {
            Some(Value::Str(s)) => s.clone(),
            _ => return Err(PthError::UnsupportedPersistentId(describe())),
        };
        if &*tag != "storage" || !(items.len() == 5 || items.len() == 6) {
            return Err(PthError::UnsupportedPersistentId(format!(
                "`{tag}` with {} fields",
                items.len()
            )));
        }
        let dtype = match &items[1] {
            Value::Global(Global::Storage(d)) => *d,
            other => return Err(unexpected("storage persistent id", "a storage type", other)),
        };
        let key = match &items[2] {
            Value::Str(s) => s.to_string(),
            other => return Err(unexpected("storage key", "str", other)),
        };
        let numel = non_negative(&items[4], "storage size")?;
        let decl = StorageDecl { dtype, numel };
        match self.storages.decls.get(&key) {
            Some(prev) if *prev != decl => return Err(PthError::StorageConflict { key }),
            Some(_) => {}
            None => {
                self.storages.decls.insert(key.clone(), decl);
            }
        }
        let (offset, view_numel) = match items.get(5) {
            None | Some(Value::None) => (0, numel),
            Some(Value::Tuple(view)) => {
                // Legacy storage view: (view_key, offset, size) in elements.
                let view = view.borrow();
                if view.len() != 3 {
                    return Err(PthError::UnsupportedPersistentId(format!(
                        "storage view metadata with {} fields",
                        view.len()
                    )));
                }
                let offset = non_negative(&view[1], "storage view offset")?;
                let size = non_negative(&view[2], "storage view size")?;
                if offset.checked_add(size).is_none_or(|end| end > numel) {
                    return Err(PthError::ViewOutOfBounds {
                        key,
                        needed: offset as u128 + size as u128,
                        available: numel,
                    });
                }
                (offset, size)
            }
            Some(other) => return Err(unexpected("storage view metadata", "tuple", other)),
        };
        Ok(Value::Storage(Rc::new(StorageRef {
            key,
            dtype,
            offset,
            numel: view_numel,
        })))
    }
}

fn non_negative(v: &Value, what: &'static str) -> Result<usize> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| PthError::Negative { what, value: *i }),
        other => Err(PthError::UnexpectedType {
            context: what,
            expected: "int",
            found: type_name(other),
        }),
    }
}

fn int_list(v: &Value, what: &'static str) -> Result<Vec<usize>> {
    match v {
        Value::Tuple(items) | Value::List(items) => {
            let items = items.borrow();
            if items.len() > MAX_NDIM {
                return Err(PthError::TooManyDims(items.len()));
            }
            items.iter().map(|i| non_negative(i, what)).collect()
        }
        other => Err(unexpected(what, "tuple of ints", other)),
    }
}

/// `_rebuild_tensor[_v2](storage, storage_offset, size, stride, ...)`; the
/// trailing requires_grad, hooks and metadata do not affect the values.
fn rebuild_tensor(args: &[Value]) -> Result<Value> {
    let storage = match &args[0] {
        Value::Storage(s) => s.clone(),
        other => return Err(unexpected("_rebuild_tensor storage", "storage", other)),
    };
    let offset = non_negative(&args[1], "tensor storage_offset")?;
    let shape = int_list(&args[2], "tensor size")?;
    let stride = int_list(&args[3], "tensor stride")?;
    if shape.len() != stride.len() {
        return Err(PthError::StrideRankMismatch {
            size: shape.len(),
            stride: stride.len(),
        });
    }
    let overflow = || PthError::SizeOverflow("tensor view extent");
    let needed = if shape.contains(&0) {
        offset as u128
    } else {
        // The last element sits at offset + sum((size - 1) * stride).
        let mut last = offset as u128;
        for (&d, &s) in shape.iter().zip(&stride) {
            let term = ((d - 1) as u128)
                .checked_mul(s as u128)
                .ok_or_else(overflow)?;
            last = last.checked_add(term).ok_or_else(overflow)?;
        }
        last + 1
    };
    if needed > storage.numel as u128 {
        return Err(PthError::ViewOutOfBounds {
            key: storage.key.clone(),
            needed,
            available: storage.numel,
        });
    }
    Ok(Value::Tensor(Rc::new(TensorSpec {
        storage,
        offset,
        shape,
        stride,
    })))
}

// ---------------------------------------------------------------------------
// Flattening and materialisation
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Flat {
    tensors: BTreeMap<String, Rc<TensorSpec>>,
    scalars: BTreeMap<String, Scalar>,
}

fn flatten_root(root: &Value, budget: &mut Budget) -> Result<Flat> {
    let mut flat = Flat::default();
    flatten(root, String::new(), 0, &mut flat, budget)?;
    Ok(flat)
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn flatten(
    v: &Value,
    key: String,
    depth: usize,
    out: &mut Flat,
    budget: &mut Budget,
) -> Result<()> {
    // Keys are charged because shared containers can be visited many times.
    budget.charge(key.len() + 1)?;
    let scalar = match v {
        Value::Dict(_) | Value::Tuple(_) | Value::List(_) if depth >= MAX_DEPTH => {
            return Err(PthError::NestingTooDeep);
        }
        Value::Dict(d) => {
            for (k, child) in d.borrow().entries.iter() {
                flatten(child, join(&key, k), depth + 1, out, budget)?;
            }
            return Ok(());
        }
        Value::List(items) | Value::Tuple(items) => {
            for (i, child) in items.borrow().iter().enumerate() {
                flatten(child, join(&key, &i.to_string()), depth + 1, out, budget)?;
            }
            return Ok(());
        }
        Value::Tensor(t) => {
            if out.scalars.contains_key(&key) || out.tensors.contains_key(&key) {
                return Err(PthError::DuplicateKey(key));
            }
            out.tensors.insert(key, t.clone());
            return Ok(());
        }
        Value::Bytes => return Ok(()),
        Value::None => Scalar::None,
        Value::Bool(b) => Scalar::Bool(*b),
        Value::Int(i) => Scalar::Int(*i),
        Value::Float(f) => Scalar::Float(*f),
        Value::Str(s) => Scalar::Str(s.to_string()),
        Value::BigInt(_) => return Err(PthError::IntegerTooLarge { key }),
        Value::Global(_) | Value::Storage(_) => {
            return Err(PthError::UnsupportedValue {
                key,
                found: type_name(v),
            })
        }
    };
    if out.scalars.contains_key(&key) || out.tensors.contains_key(&key) {
        return Err(PthError::DuplicateKey(key));
    }
    out.scalars.insert(key, scalar);
    Ok(())
}

fn materialize(
    flat: Flat,
    data: &HashMap<String, Cow<[u8]>>,
    budget: &mut Budget,
) -> Result<PthFile> {
    let mut tensors = BTreeMap::new();
    for (key, spec) in flat.tensors {
        let raw = data
            .get(&spec.storage.key)
            .ok_or_else(|| PthError::MissingStorage {
                key: spec.storage.key.clone(),
            })?;
        tensors.insert(key, copy_view(&spec, raw, budget)?);
    }
    Ok(PthFile {
        tensors,
        scalars: flat.scalars,
    })
}

/// Copies a strided view out of its storage into a contiguous buffer.
/// Bounds were checked when the tensor was rebuilt; `get` re-checks against
/// the actual bytes since those arrived separately.
fn copy_view(spec: &TensorSpec, storage: &[u8], budget: &mut Budget) -> Result<RawTensor> {
    let dtype = spec.storage.dtype;
    let elem = dtype.size();
    let numel = spec
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or(PthError::SizeOverflow("tensor element count"))?;
    let nbytes = numel
        .checked_mul(elem)
        .ok_or(PthError::SizeOverflow("tensor byte size"))?;
    budget.charge(nbytes)?;
    let out_of_bounds = || PthError::ViewOutOfBounds {
        key: spec.storage.key.clone(),
        needed: (spec.storage.offset + spec.storage.numel) as u128,
        available: storage.len() / elem,
    };
    let base = spec.storage.offset + spec.offset;
    let mut data = Vec::with_capacity(nbytes);
    if numel > 0 {
        let contiguous = {
            let mut expect = 1usize;
            let mut ok = true;
            for (&d, &s) in spec.shape.iter().zip(&spec.stride).rev() {
                if d != 1 && s != expect {
                    ok = false;
                    break;
                }
                expect *= d;
            }
            ok
        };
        if contiguous {
            let start = base * elem;
            let end = start.checked_add(nbytes).ok_or_else(out_of_bounds)?;
            data.extend_from_slice(storage.get(start..end).ok_or_else(out_of_bounds)?);
        } else {
            let ndim = spec.shape.len();
            let mut idx = vec![0usize; ndim];
            let mut off = base;
            for _ in 0..numel {
                let start = off * elem;
                data.extend_from_slice(storage.get(start..start + elem).ok_or_else(out_of_bounds)?);
                // Odometer increment over the shape; `off` stays a valid
                // index because it never steps past a dimension's end.
                for dim in (0..ndim).rev() {
                    if idx[dim] + 1 < spec.shape[dim] {
                        idx[dim] += 1;
                        off += spec.stride[dim];
                        break;
                    }
                    off -= spec.stride[dim] * (spec.shape[dim] - 1);
                    idx[dim] = 0;
                }
            }
        }
    }
    Ok(RawTensor {
        dtype,
        shape: spec.shape.clone(),
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A tiny pickle writer so test inputs read as opcodes, not byte soup.
    struct P(Vec<u8>);

    impl P {
        fn new() -> P {
            P(vec![PROTO, 2])
        }
        fn op(mut self, op: u8) -> P {
            self.0.push(op);
            self
        }
        fn raw(mut self, bytes: &[u8]) -> P {
            self.0.extend_from_slice(bytes);
            self
        }
        fn str(self, s: &str) -> P {
            let len = (s.len() as u32).to_le_bytes();
            self.op(BINUNICODE).raw(&len).raw(s.as_bytes())
        }
        fn int(self, i: i32) -> P {
            self.op(BININT).raw(&i.to_le_bytes())
        }
        fn global(self, module: &str, name: &str) -> P {
            self.op(GLOBAL)
                .raw(format!("{module}\n{name}\n").as_bytes())
        }
        fn ints(self, v: &[i32]) -> P {
            v.iter().fold(self.op(MARK), |p, &i| p.int(i)).op(TUPLE)
        }
        /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`
        /// with a zip (5-field) or legacy (6-field) persistent id.
        fn tensor(self, t: &TensorArgs) -> P {
            let p = self
                .global("torch._utils", "_rebuild_tensor_v2")
                .op(MARK)
                .op(MARK)
                .str("storage")
                .global("torch", t.storage)
                .str(t.key)
                .str("cpu")
                .int(t.numel);
            let p = if t.legacy { p.op(NONE) } else { p };
            p.op(TUPLE)
                .op(BINPERSID)
                .int(t.offset)
                .ints(t.size)
                .ints(t.stride)
                .op(NEWFALSE)
                .global("collections", "OrderedDict")
                .op(EMPTY_TUPLE)
                .op(REDUCE)
                .op(TUPLE)
                .op(REDUCE)
        }
        fn stop(self) -> Vec<u8> {
            self.op(STOP).0
        }
    }

    struct TensorArgs<'a> {
        storage: &'a str,
        key: &'a str,
        numel: i32,
        offset: i32,
        size: &'a [i32],
        stride: &'a [i32],
        legacy: bool,
    }

    fn targs<'a>(
        key: &'a str,
        numel: i32,
        offset: i32,
        size: &'a [i32],
        stride: &'a [i32],
    ) -> TensorArgs<'a> {
        TensorArgs {
            storage: "FloatStorage",
            key,
            numel,
            offset,
            size,
            stride,
            legacy: false,
        }
    }

    /// Runs a bare pickle (no storages available) through the same path.
    fn parse_only(pickle: &[u8]) -> Result<PthFile> {
        let mut budget = Budget::new(pickle.len());
        let mut storages = StorageTable::default();
        let (flat, _) = parse_pickle(pickle, true, &mut storages, |root| {
            flatten_root(root, &mut budget)
        })?;
        materialize(flat, &HashMap::new(), &mut budget)
    }

    fn make_zip(pkl: &[u8], storages: &[(&str, Vec<u8>)], byteorder: Option<&str>) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts =
            zip::write::SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        w.start_file("archive/data.pkl", opts).unwrap();
        w.write_all(pkl).unwrap();
        if let Some(order) = byteorder {
            w.start_file("archive/byteorder", opts).unwrap();
            w.write_all(order.as_bytes()).unwrap();
        }
        for (key, data) in storages {
            w.start_file(format!("archive/data/{key}"), opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn make_legacy(main: &[u8], storages: &[(&str, u64, Vec<u8>)]) -> Vec<u8> {
        let mut out = P::new().op(LONG1).raw(&[10]).raw(&LEGACY_MAGIC).stop();
        out.extend(P::new().op(BININT2).raw(&1001u16.to_le_bytes()).stop());
        out.extend(
            P::new()
                .op(EMPTY_DICT)
                .op(MARK)
                .str("protocol_version")
                .int(1001)
                .str("little_endian")
                .op(NEWTRUE)
                .op(SETITEMS)
                .stop(),
        );
        out.extend_from_slice(main);
        let keys = storages
            .iter()
            .fold(P::new().op(EMPTY_LIST).op(MARK), |p, s| p.str(s.0));
        out.extend(keys.op(APPENDS).stop());
        for (_, count, data) in storages {
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn f32s(t: &RawTensor) -> Vec<f32> {
        t.to_f32_vec().unwrap()
    }

    #[test]
    fn scalar_and_container_opcodes() {
        let pickle = P::new()
            .op(EMPTY_DICT)
            .op(BINPUT)
            .raw(&[0])
            .op(MARK)
            .op(SHORT_BINUNICODE)
            .raw(b"\x03int")
            .op(BININT1)
            .raw(&[200])
            .str("i2")
            .op(BININT2)
            .raw(&[0xff, 0xff])
            .str("neg")
            .int(-7)
            .str("long")
            .op(LONG1)
            .raw(&[5, 0, 0, 0, 0, 0x80]) // -2^39
            .str("long4")
            .op(LONG4)
            .raw(&[2, 0, 0, 0, 0x00, 0x01])
            .str("zero")
            .op(LONG1)
            .raw(&[0])
            .str("f")
            .op(BINFLOAT)
            .raw(&1.5f64.to_be_bytes())
            .str("t")
            .op(NEWTRUE)
            .str("n")
            .op(NONE)
            .op(BINUNICODE8)
            .raw(&3u64.to_le_bytes())
            .raw(b"py2")
            .op(SHORT_BINSTRING)
            .raw(b"\x02hi")
            .str("bytes")
            .op(SHORT_BINBYTES)
            .raw(b"\x02\x00\x01")
            .op(SETITEMS)
            // SETITEM with an int key, a list built by APPEND/APPENDS.
            .int(3)
            .op(EMPTY_LIST)
            .op(MEMOIZE)
            .op(NEWFALSE)
            .op(APPEND)
            .op(MARK)
            .op(BINSTRING)
            .raw(&1i32.to_le_bytes())
            .raw(b"s")
            .op(BINBYTES)
            .raw(&0u32.to_le_bytes())
            .op(BINBYTES8)
            .raw(&0u64.to_le_bytes())
            .op(APPENDS)
            .op(SETITEM)
            // Tuples of every arity, and a memo round trip.
            .str("tup")
            .op(MARK)
            .int(1)
            .op(EMPTY_TUPLE)
            .int(2)
            .op(TUPLE1)
            .int(3)
            .int(4)
            .op(TUPLE2)
            .int(5)
            .int(6)
            .int(7)
            .op(TUPLE3)
            .op(TUPLE)
            .op(LONG_BINPUT)
            .raw(&70000u32.to_le_bytes())
            .op(SETITEM)
            .str("again")
            .op(LONG_BINGET)
            .raw(&70000u32.to_le_bytes())
            .op(SETITEM)
            .str("memo_list")
            .op(BINGET)
            .raw(&[1]) // the list memoized by MEMOIZE (slot 1)
            .op(SETITEM)
            .stop();
        let f = parse_only(&pickle).unwrap();
        let s = &f.scalars;
        assert_eq!(s["int"], Scalar::Int(200));
        assert_eq!(s["i2"], Scalar::Int(65535));
        assert_eq!(s["neg"], Scalar::Int(-7));
        assert_eq!(s["long"], Scalar::Int(-(1 << 39)));
        assert_eq!(s["long4"], Scalar::Int(256));
        assert_eq!(s["zero"], Scalar::Int(0));
        assert_eq!(s["f"], Scalar::Float(1.5));
        assert_eq!(s["t"], Scalar::Bool(true));
        assert_eq!(s["n"], Scalar::None);
        assert_eq!(s["py2"], Scalar::Str("hi".into()));
        assert!(!s.contains_key("bytes"));
        assert_eq!(s["3.0"], Scalar::Bool(false));
        assert_eq!(s["3.1"], Scalar::Str("s".into()));
        assert_eq!(s["memo_list.1"], Scalar::Str("s".into()));
        assert_eq!(s["tup.0"], Scalar::Int(1));
        // tup.1 is the empty tuple, which flattens to nothing.
        assert_eq!(s["tup.2.0"], Scalar::Int(2));
        assert_eq!(s["tup.3.1"], Scalar::Int(4));
        assert_eq!(s["tup.4.2"], Scalar::Int(7));
        assert_eq!(s["again.4.2"], Scalar::Int(7));
        assert!(!s.keys().any(|k| k.starts_with("tup.1")));
        assert!(f.tensors.is_empty());
    }

    #[test]
    fn protocol4_framing_stack_global_build_and_ordered_dict() {
        let frame_len = 0u64.to_le_bytes();
        let pickle = P(vec![PROTO, 4])
            .op(FRAME)
            .raw(&frame_len)
            .op(SHORT_BINUNICODE)
            .raw(b"\x0bcollections")
            .op(MEMOIZE)
            .op(SHORT_BINUNICODE)
            .raw(b"\x0bOrderedDict")
            .op(STACK_GLOBAL)
            .op(MARK)
            .op(MARK)
            .op(MARK)
            .str("k")
            .int(1)
            .op(TUPLE)
            .op(LIST)
            .op(TUPLE)
            .op(REDUCE)
            // BUILD with a `_metadata` state must be ignored.
            .op(EMPTY_DICT)
            .op(BUILD)
            .op(DUP)
            .op(POP)
            .op(MARK)
            .op(POP_MARK)
            .stop();
        let f = parse_only(&pickle).unwrap();
        assert_eq!(f.scalars["k"], Scalar::Int(1));
        assert_eq!(f.scalars.len(), 1);
    }

    #[test]
    fn forbidden_globals_are_rejected() {
        let text = b"cos\nsystem\n(S'echo hi'\ntR.";
        match parse_only(text) {
            Err(PthError::ForbiddenGlobal { module, name }) => {
                assert_eq!((module.as_str(), name.as_str()), ("os", "system"));
            }
            other => panic!("expected ForbiddenGlobal, got {other:?}"),
        }
        let stacked = P(vec![PROTO, 4])
            .op(SHORT_BINUNICODE)
            .raw(b"\x02os")
            .op(SHORT_BINUNICODE)
            .raw(b"\x06system")
            .op(STACK_GLOBAL)
            .op(SHORT_BINUNICODE)
            .raw(b"\x07echo hi")
            .op(TUPLE1)
            .op(REDUCE)
            .stop();
        let err = parse_only(&stacked).unwrap_err();
        assert!(
            matches!(&err, PthError::ForbiddenGlobal { module, name } if module == "os" && name == "system")
        );
        assert_eq!(
            err.to_string(),
            "forbidden pickle global `os.system`: checkpoints may only contain tensors and dicts"
        );
        // Through the full zip path too, and for near-miss names.
        for (m, n) in [
            ("builtins", "eval"),
            ("torch", "load"),
            ("torch._utils", "_rebuild_device_tensor_from_numpy"),
            ("torch.storage", "UntypedStorage"),
            ("collections", "defaultdict"),
        ] {
            let file = make_zip(&P::new().global(m, n).stop(), &[], Some("little"));
            match read_pth(&file) {
                Err(PthError::ForbiddenGlobal { module, name }) => {
                    assert_eq!((module.as_str(), name.as_str()), (m, n))
                }
                other => panic!("{m}.{n}: expected ForbiddenGlobal, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_and_unsupported_opcodes_are_named() {
        match parse_only(&P::new().op(0xff).stop()) {
            Err(PthError::UnsupportedOpcode {
                opcode: 0xff,
                offset: 2,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        let err = parse_only(&P::new().op(0x81).stop()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported pickle opcode 0x81 (NEWOBJ) at byte 2"
        );
        assert!(matches!(
            parse_only(&[PROTO, 6, STOP]),
            Err(PthError::UnsupportedProtocol(6))
        ));
    }

    #[test]
    fn malformed_stacks_and_memo() {
        assert!(matches!(
            parse_only(&P::new().stop()),
            Err(PthError::StackUnderflow { .. })
        ));
        // A value below a MARK is not reachable from inside it.
        assert!(matches!(
            parse_only(&P::new().int(1).op(MARK).op(TUPLE1).stop()),
            Err(PthError::StackUnderflow { .. })
        ));
        assert!(matches!(
            parse_only(&P::new().op(TUPLE).stop()),
            Err(PthError::MissingMark { .. })
        ));
        assert!(matches!(
            parse_only(&P::new().op(BINGET).raw(&[9]).stop()),
            Err(PthError::MemoMissing(9))
        ));
        assert!(matches!(
            parse_only(&P::new().int(1).int(2).op(APPEND).stop()),
            Err(PthError::UnexpectedType { .. })
        ));
        assert!(matches!(
            parse_only(
                &P::new()
                    .op(EMPTY_DICT)
                    .op(EMPTY_LIST)
                    .int(1)
                    .op(SETITEM)
                    .stop()
            ),
            Err(PthError::UnsupportedDictKey { found: "list" })
        ));
        assert!(matches!(
            parse_only(
                &P::new()
                    .op(BINUNICODE)
                    .raw(&[2, 0, 0, 0, 0xff, 0xfe])
                    .stop()
            ),
            Err(PthError::InvalidUtf8 { .. })
        ));
        let marks = P::new().raw(&[MARK; MAX_MARKS + 1]).stop();
        assert!(matches!(parse_only(&marks), Err(PthError::TooManyMarks)));
    }

    #[test]
    fn cycles_and_deep_nesting_fail_cleanly() {
        // l = []; l.append(l)
        let cycle = P::new()
            .op(EMPTY_LIST)
            .op(MEMOIZE)
            .op(BINGET)
            .raw(&[0])
            .op(APPEND)
            .stop();
        assert!(matches!(parse_only(&cycle), Err(PthError::NestingTooDeep)));
        // ((((...)))) 200k deep: must neither overflow the stack while
        // flattening nor while being dropped.
        let mut deep = P::new().op(EMPTY_TUPLE);
        deep.0.extend(std::iter::repeat_n(TUPLE1, 200_000));
        assert!(matches!(
            parse_only(&deep.stop()),
            Err(PthError::NestingTooDeep)
        ));
        let ok = (0..MAX_DEPTH)
            .fold(P::new().int(5), |p, _| p.op(TUPLE1))
            .stop();
        assert_eq!(parse_only(&ok).unwrap().scalars.len(), 1);
    }

    #[test]
    fn truncated_inputs_are_errors() {
        let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
        let pkl = P::new()
            .op(EMPTY_DICT)
            .str("w")
            .tensor(&targs("0", 4, 0, &[2, 2], &[2, 1]))
            .op(SETITEM)
            .stop();
        let zip = make_zip(&pkl, &[("0", data.clone())], Some("little"));
        assert_eq!(
            f32s(&read_pth(&zip).unwrap().tensors["w"]),
            [1.0, 2.0, 3.0, 4.0]
        );
        for n in 0..zip.len() {
            assert!(read_pth(&zip[..n]).is_err(), "zip prefix {n} parsed");
        }
        let legacy_pkl = P::new()
            .op(EMPTY_DICT)
            .str("w")
            .tensor(&TensorArgs {
                legacy: true,
                ..targs("k", 4, 0, &[2, 2], &[2, 1])
            })
            .op(SETITEM)
            .stop();
        let legacy = make_legacy(&legacy_pkl, &[("k", 4, data)]);
        assert_eq!(
            f32s(&read_pth(&legacy).unwrap().tensors["w"]),
            [1.0, 2.0, 3.0, 4.0]
        );
        for n in 0..legacy.len() {
            assert!(read_pth(&legacy[..n]).is_err(), "legacy prefix {n} parsed");
        }
        match parse_only(&pkl[..pkl.len() - 1]) {
            Err(PthError::Truncated { .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn views_past_their_storage_are_rejected() {
        let cases: [(i32, &[i32], &[i32]); 4] = [
            (0, &[2, 3], &[3, 1]), // needs 6 of 4
            (3, &[2], &[1]),       // offset pushes past the end
            (0, &[2, 2], &[1, 3]), // strided reach
            (5, &[0], &[1]),       // empty, but offset beyond the storage
        ];
        for (offset, size, stride) in cases {
            let pkl = P::new().tensor(&targs("0", 4, offset, size, stride)).stop();
            let zip = make_zip(&pkl, &[("0", f32_bytes(&[0.0; 4]))], None);
            match read_pth(&zip) {
                Err(PthError::ViewOutOfBounds {
                    key, available: 4, ..
                }) => assert_eq!(key, "0"),
                other => panic!("{offset} {size:?} {stride:?}: {other:?}"),
            }
        }
        let huge = P::new()
            .tensor(&targs("0", 4, 0, &[i32::MAX; 8], &[i32::MAX; 8]))
            .stop();
        assert!(read_pth(&make_zip(&huge, &[("0", f32_bytes(&[0.0; 4]))], None)).is_err());
        let rank = P::new().tensor(&targs("0", 4, 0, &[2, 2], &[1])).stop();
        assert!(matches!(
            read_pth(&make_zip(&rank, &[("0", f32_bytes(&[0.0; 4]))], None)),
            Err(PthError::StrideRankMismatch { size: 2, stride: 1 })
        ));
    }

    #[test]
    fn strided_views_are_copied_contiguously() {
        // storage = 0..12, viewed as in torch: base (3,4), base.t(), base[1:, 1:3], expand.
        let storage: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let pkl = P::new()
            .op(EMPTY_DICT)
            .op(MARK)
            .str("t")
            .tensor(&targs("s", 12, 0, &[4, 3], &[1, 4]))
            .str("slice")
            .tensor(&targs("s", 12, 5, &[2, 2], &[4, 1]))
            .str("expand")
            .tensor(&targs("s", 12, 2, &[2, 3], &[0, 1]))
            .str("zero_d")
            .tensor(&targs("s", 12, 11, &[], &[]))
            .str("empty")
            .tensor(&targs("s", 12, 12, &[0, 3], &[3, 1]))
            .op(SETITEMS)
            .stop();
        let f = read_pth(&make_zip(
            &pkl,
            &[("s", f32_bytes(&storage))],
            Some("little"),
        ))
        .unwrap();
        let t = &f.tensors;
        assert_eq!(t["t"].shape, [4, 3]);
        assert_eq!(
            f32s(&t["t"]),
            [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
        );
        assert_eq!(f32s(&t["slice"]), [5., 6., 9., 10.]);
        assert_eq!(f32s(&t["expand"]), [2., 3., 4., 2., 3., 4.]);
        assert_eq!(t["zero_d"].shape, Vec::<usize>::new());
        assert_eq!(f32s(&t["zero_d"]), [11.]);
        assert_eq!(t["empty"].numel(), 0);
        assert!(t["empty"].data.is_empty());
    }

    #[test]
    fn big_endian_storages_are_swapped() {
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        let pkl = P::new().tensor(&targs("0", 2, 0, &[2], &[1])).stop();
        let f = read_pth(&make_zip(&pkl, &[("0", data)], Some("big"))).unwrap();
        assert_eq!(f32s(&f.tensors[""]), [1.5, -2.0]);
        assert!(matches!(
            read_pth(&make_zip(&pkl, &[], Some("middle"))),
            Err(PthError::UnsupportedByteOrder(_))
        ));
    }

    #[test]
    fn storage_problems_are_reported() {
        let pkl = P::new().tensor(&targs("0", 2, 0, &[2], &[1])).stop();
        assert!(matches!(
            read_pth(&make_zip(&pkl, &[], None)),
            Err(PthError::MissingStorage { .. })
        ));
        assert!(matches!(
            read_pth(&make_zip(&pkl, &[("0", vec![0; 7])], None)),
            Err(PthError::StorageSizeMismatch {
                expected: 8,
                actual: 7,
                ..
            })
        ));
        let conflict = P::new()
            .op(MARK)
            .tensor(&targs("0", 2, 0, &[2], &[1]))
            .tensor(&TensorArgs {
                storage: "HalfStorage",
                ..targs("0", 2, 0, &[2], &[1])
            })
            .op(TUPLE)
            .stop();
        assert!(matches!(
            read_pth(&make_zip(&conflict, &[("0", vec![0; 8])], None)),
            Err(PthError::StorageConflict { .. })
        ));
        let legacy_pkl = P::new()
            .tensor(&TensorArgs {
                legacy: true,
                ..targs("k", 2, 0, &[2], &[1])
            })
            .stop();
        assert!(matches!(
            read_pth(&make_legacy(&legacy_pkl, &[("k", 3, vec![0; 12])])),
            Err(PthError::StorageSizeMismatch { .. })
        ));
        assert!(matches!(
            read_pth(&make_legacy(&legacy_pkl, &[("other", 2, vec![0; 8])])),
            Err(PthError::UnknownStorageKey { .. })
        ));
        assert!(matches!(
            read_pth(b"\x1f\x8b junk"),
            Err(PthError::UnknownFormat)
        ));
        let mut bad_magic = make_legacy(&legacy_pkl, &[("k", 2, vec![0; 8])]);
        bad_magic[5] ^= 1;
        assert!(matches!(read_pth(&bad_magic), Err(PthError::BadMagic)));
    }

    #[test]
    fn legacy_storage_views() {
        // Persistent id with view metadata (view_key, offset, size): the
        // tensor sees elements 2..5 of root storage `r`.
        let pkl = P::new()
            .global("torch._utils", "_rebuild_tensor")
            .op(MARK)
            .op(MARK)
            .str("storage")
            .global("torch", "DoubleStorage")
            .str("r")
            .str("cpu")
            .int(6)
            .str("v")
            .int(2)
            .int(3)
            .op(TUPLE3)
            .op(TUPLE)
            .op(BINPERSID)
            .int(1)
            .ints(&[2])
            .ints(&[1])
            .op(TUPLE)
            .op(REDUCE)
            .stop();
        let data: Vec<u8> = (0..6).flat_map(|i| f64::from(i).to_le_bytes()).collect();
        let f = read_pth(&make_legacy(&pkl, &[("r", 6, data)])).unwrap();
        assert_eq!(f.tensors[""].dtype, DType::F64);
        assert_eq!(f32s(&f.tensors[""]), [3.0, 4.0]);
    }

    #[test]
    fn parameters_and_output_budget() {
        let pkl = P::new()
            .global("torch._utils", "_rebuild_parameter")
            .op(MARK)
            .tensor(&targs("0", 1, 0, &[1], &[1]))
            .op(NEWTRUE)
            .global("collections", "OrderedDict")
            .op(EMPTY_TUPLE)
            .op(REDUCE)
            .op(TUPLE)
            .op(REDUCE)
            .stop();
        let f = read_pth(&make_zip(&pkl, &[("0", f32_bytes(&[9.0]))], None)).unwrap();
        assert_eq!(f32s(&f.tensors[""]), [9.0]);
        // A stride-0 view of one element claiming 2^40 elements.
        let bomb = P::new()
            .tensor(&targs("0", 1, 0, &[1 << 20, 1 << 20], &[0, 0]))
            .stop();
        assert!(matches!(
            read_pth(&make_zip(&bomb, &[("0", f32_bytes(&[9.0]))], None)),
            Err(PthError::OutputTooLarge { .. })
        ));
    }

    #[test]
    fn flattened_key_collisions_are_errors() {
        let pkl = P::new()
            .op(EMPTY_DICT)
            .op(MARK)
            .str("a.b")
            .int(1)
            .str("a")
            .op(EMPTY_DICT)
            .str("b")
            .int(2)
            .op(SETITEM)
            .op(SETITEMS)
            .stop();
        assert!(matches!(parse_only(&pkl), Err(PthError::DuplicateKey(k)) if k == "a.b"));
    }

    #[test]
    fn dtype_conversions() {
        let h = |bits: &[u16]| RawTensor {
            dtype: DType::F16,
            shape: vec![bits.len()],
            data: bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
        };
        let v = h(&[
            0x3c00, 0xc100, 0x7bff, 0x0001, 0x8000, 0x7c00, 0xfc00, 0x3555,
        ])
        .to_f32_vec()
        .unwrap();
        assert_eq!(v[..4], [1.0, -2.5, 65504.0, 5.960_464_5e-8]);
        assert!(v[4] == 0.0 && v[4].is_sign_negative());
        assert_eq!(v[5..7], [f32::INFINITY, f32::NEG_INFINITY]);
        assert_eq!(v[7], 0.333_251_95);
        assert!(h(&[0x7e00]).to_f32_vec().unwrap()[0].is_nan());
        let bf = RawTensor {
            dtype: DType::BF16,
            shape: vec![1],
            data: 0xc049u16.to_le_bytes().to_vec(),
        };
        assert_eq!(bf.to_f32_vec().unwrap(), [-3.140625]);
        let ints = |dtype, data: Vec<u8>| {
            RawTensor {
                dtype,
                shape: vec![2],
                data,
            }
            .to_f32_vec()
            .unwrap()
        };
        assert_eq!(ints(DType::I8, vec![0x80, 5]), [-128.0, 5.0]);
        assert_eq!(ints(DType::U8, vec![0x80, 5]), [128.0, 5.0]);
        assert_eq!(ints(DType::Bool, vec![0, 1]), [0.0, 1.0]);
        assert_eq!(ints(DType::I16, vec![0xff, 0xff, 2, 0]), [-1.0, 2.0]);
        let mut i64s = (-3i64).to_le_bytes().to_vec();
        i64s.extend(4i64.to_le_bytes());
        assert_eq!(ints(DType::I64, i64s), [-3.0, 4.0]);
        let bad = RawTensor {
            dtype: DType::F32,
            shape: vec![2, 2],
            data: vec![0; 15],
        };
        assert!(matches!(
            bad.to_f32_vec(),
            Err(PthError::DataLengthMismatch { .. })
        ));
        assert_eq!(bad.numel(), 4);
    }

    /// The files of `tests/reference/make_pth_fixtures.py`, made fresh by real torch rather
    /// than committed: `make fixtures` writes them to `$PARTIALCONV_REFERENCE_DIR/pth`; without
    /// that variable the script runs here, with `$PARTIALCONV_PYTHON`.
    fn torch_fixture_dir() -> std::path::PathBuf {
        if let Some(dir) = std::env::var_os("PARTIALCONV_REFERENCE_DIR") {
            return std::path::PathBuf::from(dir).join("pth");
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = std::env::temp_dir().join(format!("partialconv-pth-{}", std::process::id()));
        let python = std::env::var("PARTIALCONV_PYTHON")
            .unwrap_or_else(|_| root.join(".venv/bin/python").display().to_string());
        let status = std::process::Command::new(python)
            .arg(root.join("tests/reference/make_pth_fixtures.py"))
            .arg(&dir)
            .status()
            .expect("running make_pth_fixtures.py");
        assert!(status.success(), "make_pth_fixtures.py failed");
        dir
    }

    /// Checks the files written by `tests/reference/make_pth_fixtures.py`
    /// (real torch 2.11 output) against the values it recorded.
    #[test]
    fn torch_fixtures_match_expected() {
        let dir = torch_fixture_dir();
        let expected = std::fs::read_to_string(dir.join("expected.tsv")).unwrap();
        let mut files: BTreeMap<String, PthFile> = BTreeMap::new();
        let mut checked = 0;
        for line in expected.lines().filter(|l| !l.is_empty()) {
            let cols: Vec<&str> = line.split('\t').collect();
            for name in cols[0].split(',') {
                let f = files.entry(name.to_string()).or_insert_with(|| {
                    let bytes = std::fs::read(dir.join(name)).unwrap();
                    read_pth(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
                });
                let ctx = format!("{name}: {line}");
                match cols[1] {
                    "count" => {
                        assert_eq!(f.tensors.len().to_string(), cols[2], "{ctx}");
                        assert_eq!(f.scalars.len().to_string(), cols[3], "{ctx}");
                    }
                    "tensor" => check_tensor(&f.tensors, &cols, &ctx),
                    "scalar" => check_scalar(&f.scalars, &cols, &ctx),
                    other => panic!("unknown line kind {other}"),
                }
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} expectations");
    }

    fn check_tensor(tensors: &BTreeMap<String, RawTensor>, cols: &[&str], ctx: &str) {
        let t = tensors
            .get(cols[2])
            .unwrap_or_else(|| panic!("missing tensor: {ctx}"));
        assert_eq!(format!("{:?}", t.dtype), cols[3], "{ctx}");
        let shape: Vec<usize> = cols[4]
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(t.shape, shape, "{ctx}");
        let want: Vec<&str> = cols[5].split(' ').filter(|s| !s.is_empty()).collect();
        assert_eq!(want.len(), t.numel(), "{ctx}");
        assert_eq!(t.data.len(), t.numel() * t.dtype.size(), "{ctx}");
        let e = t.dtype.size();
        for (i, w) in want.iter().enumerate() {
            let b = &t.data[i * e..(i + 1) * e];
            match t.dtype {
                DType::I64 | DType::I32 | DType::I16 | DType::I8 | DType::U8 | DType::Bool => {
                    let got = match t.dtype {
                        DType::I64 => i64::from_le_bytes(b.try_into().unwrap()),
                        DType::I32 => i32::from_le_bytes(b.try_into().unwrap()).into(),
                        DType::I16 => i16::from_le_bytes(b.try_into().unwrap()).into(),
                        DType::I8 => (b[0] as i8).into(),
                        _ => b[0].into(),
                    };
                    assert_eq!(got, w.parse::<i64>().unwrap(), "{ctx} [{i}]");
                }
                _ => {
                    let want: f64 = w.parse().unwrap();
                    let got = if t.dtype == DType::F64 {
                        f64::from_le_bytes(b.try_into().unwrap())
                    } else {
                        f64::from(t.to_f32_vec().unwrap()[i])
                    };
                    assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "{ctx} [{i}]: {got} != {want}"
                    );
                }
            }
        }
    }

    fn check_scalar(scalars: &BTreeMap<String, Scalar>, cols: &[&str], ctx: &str) {
        let got = scalars
            .get(cols[2])
            .unwrap_or_else(|| panic!("missing scalar: {ctx}"));
        let text = cols.get(4).copied().unwrap_or("");
        let want = match cols[3] {
            "Int" => Scalar::Int(text.parse().unwrap()),
            "Float" => Scalar::Float(text.parse().unwrap()),
            "Bool" => Scalar::Bool(text == "True"),
            "Str" => Scalar::Str(text.to_string()),
            "None" => Scalar::None,
            other => panic!("unknown scalar type {other}"),
        };
        assert_eq!(*got, want, "{ctx}");
    }
}
