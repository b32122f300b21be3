//! Rebuilding SAM text from a dataset, and comparing it with `samtools view`.
//!
//! The dataset is read with the `parquet` crate's own Arrow reader, and the expected text
//! comes from samtools, so neither side of the comparison goes through bamflow's code.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type, Int64Type, UInt16Type, UInt8Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// One cell of a row, typed as the reader returned it.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Text(String),
    Int(i64),
    Float(f32),
    IntList(Vec<i64>),
    FloatList(Vec<f32>),
}

impl Cell {
    fn text(&self) -> Option<&str> {
        match self {
            Cell::Text(s) => Some(s),
            _ => None,
        }
    }

    fn int(&self) -> Option<i64> {
        match self {
            Cell::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// A dataset as rows of named cells, with its stored SAM header.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    pub sam_header: String,
    pub schema_version: String,
    /// Arrow types as the reader reconstructed them, by column.
    pub types: Vec<DataType>,
    pub parts: Vec<String>,
}

/// Reads every `part-NNNNN.parquet` of a dataset folder, in order.
///
/// # Errors
///
/// Fails on unreadable parts, a gap in part numbers, or parts that disagree on the header.
pub fn read_dataset(dir: &Path) -> anyhow::Result<Dataset> {
    let mut parts: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-") && n.ends_with(".parquet"))
        .collect();
    parts.sort();
    for (i, name) in parts.iter().enumerate() {
        ensure!(
            *name == format!("part-{i:05}.parquet"),
            "part numbering has a gap at {name}"
        );
    }
    ensure!(!parts.is_empty(), "dataset {} has no parts", dir.display());

    let mut dataset: Option<Dataset> = None;
    for name in &parts {
        let path = dir.join(name);
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path)?)
            .with_context(|| format!("opening {}", path.display()))?;
        let kv: HashMap<String, String> = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .into_iter()
            .flatten()
            .filter_map(|kv| kv.value.clone().map(|v| (kv.key.clone(), v)))
            .collect();
        let header = kv
            .get("bamflow:sam_header")
            .cloned()
            .ok_or_else(|| anyhow!("{name}: no bamflow:sam_header"))?;
        let version = kv
            .get("bamflow:schema_version")
            .cloned()
            .unwrap_or_default();
        ensure!(
            kv.contains_key("bamflow:source"),
            "{name}: no bamflow:source"
        );
        let schema = builder.schema().clone();
        let reader = builder.build()?;

        let d = dataset.get_or_insert_with(|| Dataset {
            columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
            rows: Vec::new(),
            sam_header: header.clone(),
            schema_version: version.clone(),
            types: schema
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect(),
            parts: parts.clone(),
        });
        ensure!(d.sam_header == header, "{name}: header differs from part 0");
        for batch in reader {
            push_rows(&mut d.rows, &batch?)?;
        }
    }
    dataset.ok_or_else(|| anyhow!("no parts"))
}

/// The rows of record batches, as the cells [`read_dataset`] gives, to compare batches from
/// anywhere (the engine's streaming reader) with a dataset.
///
/// # Errors
///
/// A column of a type the dataset schema does not use.
pub fn rows_of(batches: &[RecordBatch]) -> anyhow::Result<Vec<Vec<Cell>>> {
    let mut rows = Vec::new();
    for batch in batches {
        push_rows(&mut rows, batch)?;
    }
    Ok(rows)
}

fn push_rows(rows: &mut Vec<Vec<Cell>>, batch: &RecordBatch) -> anyhow::Result<()> {
    let start = rows.len();
    rows.extend((0..batch.num_rows()).map(|_| Vec::with_capacity(batch.num_columns())));
    for column in batch.columns() {
        for row in 0..batch.num_rows() {
            rows[start + row].push(cell(column, row)?);
        }
    }
    Ok(())
}

fn cell(array: &ArrayRef, row: usize) -> anyhow::Result<Cell> {
    if array.is_null(row) {
        return Ok(Cell::Null);
    }
    Ok(match array.data_type() {
        DataType::Utf8 => Cell::Text(array.as_string::<i32>().value(row).to_owned()),
        DataType::UInt8 => Cell::Int(array.as_primitive::<UInt8Type>().value(row).into()),
        DataType::UInt16 => Cell::Int(array.as_primitive::<UInt16Type>().value(row).into()),
        DataType::Int32 => Cell::Int(array.as_primitive::<Int32Type>().value(row).into()),
        DataType::Int64 => Cell::Int(array.as_primitive::<Int64Type>().value(row)),
        DataType::Float32 => Cell::Float(array.as_primitive::<Float32Type>().value(row)),
        DataType::Dictionary(_, _) => {
            let dict = array.as_dictionary::<Int32Type>();
            let key = dict.keys().value(row) as usize;
            Cell::Text(dict.values().as_string::<i32>().value(key).to_owned())
        }
        DataType::List(field) => {
            let list = array.as_list::<i32>().value(row);
            match field.data_type() {
                DataType::Int64 => {
                    Cell::IntList(list.as_primitive::<Int64Type>().values().to_vec())
                }
                DataType::Float32 => {
                    Cell::FloatList(list.as_primitive::<Float32Type>().values().to_vec())
                }
                other => bail!("unexpected list item type {other}"),
            }
        }
        other => bail!("unexpected column type {other}"),
    })
}

/// The SAM column each dataset column corresponds to.
const SAM_FIELDS: [&str; 11] = [
    "qname", "flag", "rname", "pos", "mapq", "cigar", "rnext", "pnext", "tlen", "seq", "qual",
];

impl Dataset {
    fn index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// SAM lines (`samtools view -h --no-PG` layout) rebuilt from a dataset holding every
    /// standard column. Promoted tags (`specs` like `NM:i`) are appended after `tags`.
    ///
    /// # Errors
    ///
    /// Fails when a standard column is missing.
    pub fn to_sam(&self, promoted: &[&str]) -> anyhow::Result<Vec<String>> {
        let indexes: Vec<usize> = SAM_FIELDS
            .iter()
            .map(|name| {
                self.index(name)
                    .ok_or_else(|| anyhow!("column {name} missing"))
            })
            .collect::<anyhow::Result<_>>()?;
        let tags = self
            .index("tags")
            .ok_or_else(|| anyhow!("column tags missing"))?;

        let mut lines: Vec<String> = self.sam_header.lines().map(str::to_owned).collect();
        for row in &self.rows {
            let get = |field: usize| &row[indexes[field]];
            let text = |field: usize, null: &str| get(field).text().unwrap_or(null).to_owned();
            let int = |field: usize, null: i64| get(field).int().unwrap_or(null).to_string();
            let rname = get(2).text();
            let rnext = match (get(6).text(), rname) {
                (Some(next), Some(name)) if next == name => "=".to_owned(),
                (Some(next), _) => next.to_owned(),
                (None, _) => "*".to_owned(),
            };
            let mut fields = vec![
                text(0, "*"),
                int(1, 0),
                text(2, "*"),
                int(3, 0),
                int(4, 255),
                text(5, "*"),
                rnext,
                int(7, 0),
                int(8, 0),
                text(9, "*"),
                text(10, "*"),
            ];
            if let Some(t) = row[tags].text() {
                fields.extend(t.split('\t').map(str::to_owned));
            }
            for spec in promoted {
                let name = &spec[..2];
                let ty = &spec[3..];
                let Some(i) = self.index(name) else { continue };
                if let Some(field) = format_promoted(name, ty, &row[i]) {
                    fields.push(field);
                }
            }
            lines.push(fields.join("\t"));
        }
        Ok(lines)
    }
}

/// A promoted cell as a SAM field; array subtypes and exact float digits are normalised by
/// [`compare`], which compares such values as numbers.
fn format_promoted(name: &str, ty: &str, cell: &Cell) -> Option<String> {
    let join = |v: Vec<String>| v.iter().map(|s| format!(",{s}")).collect::<String>();
    Some(match cell {
        Cell::Null => return None,
        Cell::Int(v) => format!("{name}:i:{v}"),
        Cell::Float(v) => format!("{name}:f:{v}"),
        Cell::Text(s) => format!("{name}:{ty}:{s}"),
        Cell::IntList(v) => format!(
            "{name}:B:*{}",
            join(v.iter().map(|x| x.to_string()).collect())
        ),
        Cell::FloatList(v) => format!(
            "{name}:B:f{}",
            join(v.iter().map(|x| x.to_string()).collect())
        ),
    })
}

/// How strictly records are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagOrder {
    /// Tags in file order, as samtools prints them.
    Exact,
    /// Tags as a set (promoted tags move to the end of the line).
    Unordered,
}

/// Compares rebuilt lines with samtools' lines; the error names the first difference.
///
/// Floats (`f` values and `B:f` arrays) are compared as numbers, within the six significant
/// digits `%g` prints; integer arrays ignore the subtype letter (promoted columns widen it).
///
/// # Errors
///
/// Fails with the line number and both lines at the first difference.
pub fn compare(ours: &[String], samtools: &[String], order: TagOrder) -> anyhow::Result<()> {
    for (i, (a, b)) in ours.iter().zip(samtools).enumerate() {
        if a == b {
            continue;
        }
        let same = !a.starts_with('@') && same_record(a, b, order);
        ensure!(
            same,
            "line {} differs:\n  bamflow:  {a}\n  samtools: {b}",
            i + 1
        );
    }
    ensure!(
        ours.len() == samtools.len(),
        "bamflow has {} lines, samtools {}",
        ours.len(),
        samtools.len()
    );
    Ok(())
}

fn same_record(a: &str, b: &str, order: TagOrder) -> bool {
    let a: Vec<&str> = a.split('\t').collect();
    let b: Vec<&str> = b.split('\t').collect();
    if a.len() != b.len() || a[..11] != b[..11] {
        return false;
    }
    let (mut ta, mut tb) = (a[11..].to_vec(), b[11..].to_vec());
    if order == TagOrder::Unordered {
        ta.sort_unstable();
        tb.sort_unstable();
    }
    ta.iter().zip(&tb).all(|(x, y)| same_field(x, y))
}

fn same_field(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let (Some((na, va)), Some((nb, vb))) = (a.split_at_checked(5), b.split_at_checked(5)) else {
        return false;
    };
    let close = |x: &str, y: &str| match (x.parse::<f64>(), y.parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y || (x - y).abs() <= 1e-5 * x.abs().max(y.abs()),
        _ => x == y,
    };
    match (na, nb) {
        _ if na[..2] != nb[..2] => false,
        _ if na.ends_with(":f:") && nb.ends_with(":f:") => close(va, vb),
        _ if na.ends_with(":i:") && nb.ends_with(":i:") => va == vb,
        _ if na.ends_with(":B:") && nb.ends_with(":B:") => {
            let (ea, eb): (Vec<&str>, Vec<&str>) =
                (va.split(',').collect(), vb.split(',').collect());
            let float = ea[0] == "f" || eb[0] == "f";
            let subtypes_agree = ea[0] == eb[0] || ea[0] == "*" || eb[0] == "*";
            subtypes_agree
                && ea.len() == eb.len()
                && ea[1..]
                    .iter()
                    .zip(&eb[1..])
                    .all(|(x, y)| if float { close(x, y) } else { x == y })
        }
        _ => false,
    }
}

/// Projects samtools' record fields onto a column subset, as strings, for `--columns` tests.
/// `end` is computed from POS and the CIGAR text; `rnext` resolves `=`.
pub fn samtools_columns(line: &str, columns: &[&str]) -> Vec<Option<String>> {
    let f: Vec<&str> = line.split('\t').collect();
    let star = |s: &str| (s != "*").then(|| s.to_owned());
    let zero = |s: &str| (s != "0").then(|| s.to_owned());
    columns
        .iter()
        .map(|&c| match c {
            "qname" => star(f[0]),
            "flag" => Some(f[1].to_owned()),
            "rname" => star(f[2]),
            "pos" => zero(f[3]),
            "mapq" => (f[4] != "255").then(|| f[4].to_owned()),
            "cigar" => star(f[5]),
            "rnext" => match f[6] {
                "=" => Some(f[2].to_owned()),
                other => star(other),
            },
            "pnext" => zero(f[7]),
            "tlen" => Some(f[8].to_owned()),
            "seq" => star(f[9]),
            "qual" => star(f[10]),
            "end" => alignment_end(f[1], f[3], f[5]),
            "tags" => (f.len() > 11).then(|| f[11..].join("\t")),
            other => panic!("no such column {other}"),
        })
        .collect()
}

/// 1-based inclusive end from SAM text: POS + reference-consuming lengths − 1.
fn alignment_end(flag: &str, pos: &str, cigar: &str) -> Option<String> {
    let unmapped = flag.parse::<u16>().map_or(true, |f| f & 4 != 0);
    if unmapped || cigar == "*" {
        return None;
    }
    let (mut span, mut n, mut consumes) = (0i64, 0i64, false);
    for c in cigar.chars() {
        if let Some(d) = c.to_digit(10) {
            n = n * 10 + i64::from(d);
        } else {
            // A zero-length op consumes nothing (`5H0M5H` has no end).
            if "MDN=X".contains(c) && n > 0 {
                span += n;
                consumes = true;
            }
            n = 0;
        }
    }
    consumes.then(|| (pos.parse::<i64>().unwrap_or(0) + span - 1).to_string())
}

/// A dataset row's cells as strings, for comparison with [`samtools_columns`].
pub fn row_strings(row: &[Cell]) -> Vec<Option<String>> {
    row.iter()
        .map(|c| match c {
            Cell::Null => None,
            Cell::Text(s) => Some(s.clone()),
            Cell::Int(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_compare_as_numbers_and_the_rest_exactly() {
        let line = |tags: &str| format!("r\t0\tc\t1\t60\t1M\t*\t0\t0\tA\tI\t{tags}");
        let ok = |a: &str, b: &str| same_record(&line(a), &line(b), TagOrder::Exact);
        assert!(ok("XF:f:0.333333", "XF:f:0.33333334"));
        assert!(ok("XB:B:f,1e+06,2", "XB:B:f,1000000,2"));
        assert!(ok("XB:B:*,1,2", "XB:B:c,1,2"));
        assert!(!ok("XF:f:0.3", "XF:f:0.31"));
        assert!(!ok("NM:i:1", "NM:i:2"));
        assert!(!ok("XB:B:c,1,2", "XB:B:c,1,3"));
        assert!(!ok("XZ:Z:a", "XZ:Z:b"));
    }

    #[test]
    fn end_from_cigar_text() {
        assert_eq!(alignment_end("0", "100", "5S10M2D3M1I"), Some("114".into()));
        assert_eq!(alignment_end("4", "100", "10M"), None);
        assert_eq!(alignment_end("0", "100", "5S5I"), None);
        assert_eq!(alignment_end("0", "100", "5H0M5H"), None);
    }
}
