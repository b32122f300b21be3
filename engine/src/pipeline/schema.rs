//! The Arrow schema of a dataset (DESIGN.md §3), defined once.

use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};

/// Version of the column layout, stored in every part as `bamflow:schema_version`: 1 for the
/// DESIGN table, 2 when a `tag_layout` column follows promoted tags ([`OutputSchema::version`]).
/// Version 1 datasets keep reading: version 2 only adds a column.
pub const SCHEMA_VERSION: u32 = 1;

/// The schema version of a dataset whose promoted tags carry a [`TAG_LAYOUT`] column.
pub const SCHEMA_VERSION_TAG_LAYOUT: u32 = 2;

/// Name of the column that says where promoted tags stood among a record's optional fields.
///
/// Promoting a tag takes it out of the `tags` text; to put it back exactly (`bamflow export`),
/// its place among the other fields and, for an integer array, its element type must be kept.
/// The value is null when the promoted values simply follow the `tags` fields in the order
/// the tags were configured, integer arrays in their smallest element type (unsigned when no
/// element is negative, `C` when empty) — what most aligners write and what `export` assumes.
/// Otherwise it lists, for each promoted column holding a value (in configuration order), the
/// value's 0-based index among the record's optional fields, with `:` and the element type for
/// an integer array: `0,3:S`.
pub const TAG_LAYOUT: &str = "tag_layout";

/// A standard column, in schema order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StandardColumn {
    /// Read name.
    Qname,
    /// FLAG.
    Flag,
    /// Reference name.
    Rname,
    /// 1-based position.
    Pos,
    /// Mapping quality.
    Mapq,
    /// CIGAR text.
    Cigar,
    /// Mate's reference name.
    Rnext,
    /// Mate's 1-based position.
    Pnext,
    /// Template length.
    Tlen,
    /// Sequence text.
    Seq,
    /// Qualities, Phred+33.
    Qual,
    /// 1-based inclusive alignment end.
    End,
    /// Optional fields not promoted, as samtools prints them.
    Tags,
}

impl StandardColumn {
    /// Every standard column, in schema order.
    pub const ALL: [Self; 13] = [
        Self::Qname,
        Self::Flag,
        Self::Rname,
        Self::Pos,
        Self::Mapq,
        Self::Cigar,
        Self::Rnext,
        Self::Pnext,
        Self::Tlen,
        Self::Seq,
        Self::Qual,
        Self::End,
        Self::Tags,
    ];

    /// The column's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Qname => "qname",
            Self::Flag => "flag",
            Self::Rname => "rname",
            Self::Pos => "pos",
            Self::Mapq => "mapq",
            Self::Cigar => "cigar",
            Self::Rnext => "rnext",
            Self::Pnext => "pnext",
            Self::Tlen => "tlen",
            Self::Seq => "seq",
            Self::Qual => "qual",
            Self::End => "end",
            Self::Tags => "tags",
        }
    }

    fn data_type(self) -> DataType {
        let dictionary =
            || DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        match self {
            Self::Qname | Self::Cigar | Self::Seq | Self::Qual | Self::Tags => DataType::Utf8,
            Self::Flag => DataType::UInt16,
            Self::Rname | Self::Rnext => dictionary(),
            Self::Pos | Self::Pnext | Self::Tlen | Self::End => DataType::Int32,
            Self::Mapq => DataType::UInt8,
        }
    }

    fn nullable(self) -> bool {
        !matches!(self, Self::Flag | Self::Tlen)
    }
}

/// The SAM type a promoted tag's column holds; values of any other type stay in `tags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromotedType {
    /// `i`: c/C/s/S/i/I → Int64.
    Integer,
    /// `f` → Float32.
    Float,
    /// `Z` → Utf8.
    String,
    /// `H` → Utf8.
    Hex,
    /// `A` → Utf8.
    Character,
    /// `B:i`: arrays of any integer subtype → List(Int64).
    IntegerArray,
    /// `B:f` → List(Float32).
    FloatArray,
}

impl PromotedType {
    fn data_type(self) -> DataType {
        match self {
            Self::Integer => DataType::Int64,
            Self::Float => DataType::Float32,
            Self::String | Self::Hex | Self::Character => DataType::Utf8,
            Self::IntegerArray => {
                DataType::List(Arc::new(Field::new_list_field(DataType::Int64, false)))
            }
            Self::FloatArray => {
                DataType::List(Arc::new(Field::new_list_field(DataType::Float32, false)))
            }
        }
    }
}

/// A tag configured to get its own column, e.g. `NM:i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromotedTag {
    /// The two-letter tag.
    pub name: [u8; 2],
    /// Its column's type.
    pub ty: PromotedType,
}

impl PromotedTag {
    /// The column's name: the tag.
    pub fn column_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

impl std::str::FromStr for PromotedTag {
    type Err = SchemaError;

    /// Parses `NM:i`, `CB:Z`, `ML:B:i`, `XF:B:f`, ….
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || SchemaError::InvalidTagSpec(s.to_owned());
        let (name, ty) = s.split_once(':').ok_or_else(invalid)?;
        let name: [u8; 2] = name.as_bytes().try_into().map_err(|_| invalid())?;
        let valid_name = name[0].is_ascii_alphabetic() && name[1].is_ascii_alphanumeric();
        if !valid_name {
            return Err(invalid());
        }
        let ty = match ty {
            "i" => PromotedType::Integer,
            "f" => PromotedType::Float,
            "Z" => PromotedType::String,
            "H" => PromotedType::Hex,
            "A" => PromotedType::Character,
            "B:i" => PromotedType::IntegerArray,
            "B:f" => PromotedType::FloatArray,
            _ => return Err(invalid()),
        };
        Ok(Self { name, ty })
    }
}

impl fmt::Display for PromotedTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ty = match self.ty {
            PromotedType::Integer => "i",
            PromotedType::Float => "f",
            PromotedType::String => "Z",
            PromotedType::Hex => "H",
            PromotedType::Character => "A",
            PromotedType::IntegerArray => "B:i",
            PromotedType::FloatArray => "B:f",
        };
        write!(f, "{}:{ty}", self.column_name())
    }
}

/// One output column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// A standard column.
    Standard(StandardColumn),
    /// Index into [`OutputSchema::promoted`].
    Promoted(usize),
    /// Where the promoted values stood among the optional fields ([`TAG_LAYOUT`]).
    TagLayout,
}

/// Why a column selection or tag list is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error(
        "invalid tag {0:?}: expected TAG:TYPE with TYPE one of i, f, Z, H, A, B:i, B:f (e.g. NM:i)"
    )]
    /// A promoted tag that is not `TAG:TYPE`.
    InvalidTagSpec(String),
    #[error("tag {0} is listed twice in tags")]
    /// A tag promoted twice.
    DuplicateTag(String),
    #[error("unknown column {0:?}: columns are qname, flag, rname, pos, mapq, cigar, rnext, pnext, tlen, seq, qual, end, tags, and the promoted tags")]
    /// A column that does not exist.
    UnknownColumn(String),
    #[error("column {0:?} is selected twice")]
    /// A column selected twice.
    DuplicateColumn(String),
}

/// The columns a conversion writes, and which promoted tags leave `tags`.
#[derive(Clone, Debug)]
pub struct OutputSchema {
    /// Private so that `standard`, derived from it, cannot go stale.
    columns: Vec<Column>,
    /// The promoted tags, written or not.
    pub promoted: Vec<PromotedTag>,
    arrow: SchemaRef,
    /// Which standard columns are written, by [`StandardColumn`] index: the decoder asks for
    /// every field of every record, and a scan of `columns` was 1.4% of all instructions.
    standard: [bool; StandardColumn::ALL.len()],
}

impl OutputSchema {
    /// Builds the schema from a column selection (empty = all) and promoted tags.
    ///
    /// # Errors
    ///
    /// Returns a [`SchemaError`] for unknown or duplicate names.
    pub fn new(selection: &[String], promoted: &[PromotedTag]) -> Result<Self, SchemaError> {
        for (i, tag) in promoted.iter().enumerate() {
            let name = tag.column_name();
            // Tag names have two characters and standard names more, so only tags can clash.
            if Self::column_named(&name, &promoted[..i]).is_some() {
                return Err(SchemaError::DuplicateTag(name));
            }
        }

        let columns = if selection.is_empty() {
            let standard = StandardColumn::ALL.iter().map(|&c| Column::Standard(c));
            let layout = (!promoted.is_empty()).then_some(Column::TagLayout);
            standard
                .chain((0..promoted.len()).map(Column::Promoted))
                .chain(layout)
                .collect()
        } else {
            let mut columns = Vec::with_capacity(selection.len());
            for name in selection {
                let column = Self::column_named(name, promoted)
                    .ok_or_else(|| SchemaError::UnknownColumn(name.clone()))?;
                if columns.contains(&column) {
                    return Err(SchemaError::DuplicateColumn(name.clone()));
                }
                columns.push(column);
            }
            columns
        };

        let fields: Vec<Field> = columns
            .iter()
            .map(|column| match *column {
                Column::Standard(c) => Field::new(c.name(), c.data_type(), c.nullable()),
                Column::Promoted(i) => {
                    Field::new(promoted[i].column_name(), promoted[i].ty.data_type(), true)
                }
                Column::TagLayout => Field::new(TAG_LAYOUT, DataType::Utf8, true),
            })
            .collect();

        let mut standard = [false; StandardColumn::ALL.len()];
        for column in &columns {
            if let Column::Standard(c) = *column {
                standard[c as usize] = true;
            }
        }
        Ok(Self {
            columns,
            promoted: promoted.to_vec(),
            arrow: Arc::new(Schema::new(fields)),
            standard,
        })
    }

    /// The column `name` stands for, written or not: a standard column, a promoted tag's, or
    /// (when tags are promoted) the tag layout.
    pub fn column_named(name: &str, promoted: &[PromotedTag]) -> Option<Column> {
        let standard = StandardColumn::ALL.iter().find(|c| c.name() == name);
        if let Some(&c) = standard {
            return Some(Column::Standard(c));
        }
        if name == TAG_LAYOUT && !promoted.is_empty() {
            return Some(Column::TagLayout);
        }
        let i = promoted.iter().position(|t| t.column_name() == name)?;
        Some(Column::Promoted(i))
    }

    /// Whether `column` holds text (Arrow `Utf8`), the columns a zstd level trial can sample.
    pub fn is_text(column: Column, promoted: &[PromotedTag]) -> bool {
        let data_type = match column {
            Column::Standard(c) => c.data_type(),
            Column::Promoted(i) => match promoted.get(i) {
                Some(tag) => tag.ty.data_type(),
                None => return false,
            },
            Column::TagLayout => DataType::Utf8,
        };
        data_type == DataType::Utf8
    }

    /// The written columns, in order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The Arrow schema of the written columns.
    pub fn arrow(&self) -> &SchemaRef {
        &self.arrow
    }

    /// The version of this column layout: [`SCHEMA_VERSION_TAG_LAYOUT`] when the tag layout is
    /// written, else [`SCHEMA_VERSION`], so datasets without promoted tags stay version 1.
    pub fn version(&self) -> u32 {
        if self.columns.contains(&Column::TagLayout) {
            SCHEMA_VERSION_TAG_LAYOUT
        } else {
            SCHEMA_VERSION
        }
    }

    /// Whether the tag layout column is written.
    pub fn has_tag_layout(&self) -> bool {
        self.columns.contains(&Column::TagLayout)
    }

    /// Whether a standard column is written.
    pub fn has(&self, column: StandardColumn) -> bool {
        self.standard[column as usize]
    }

    /// Names of the written columns, in order.
    pub fn column_names(&self) -> Vec<String> {
        self.arrow
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(specs: &[&str]) -> Vec<PromotedTag> {
        specs.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn has_answers_for_every_standard_column() {
        for (i, &c) in StandardColumn::ALL.iter().enumerate() {
            assert_eq!(c as usize, i, "ALL is in declaration order");
        }
        let schema = OutputSchema::new(&["seq".into(), "NM".into()], &tags(&["NM:i"])).unwrap();
        for c in StandardColumn::ALL {
            assert_eq!(schema.has(c), c == StandardColumn::Seq, "{}", c.name());
        }
    }

    #[test]
    fn default_schema_is_the_design_table() {
        let schema = OutputSchema::new(&[], &tags(&["NM:i", "ML:B:i"])).unwrap();
        let rendered: Vec<String> = schema
            .arrow()
            .fields()
            .iter()
            .map(|f| format!("{} {} {}", f.name(), f.data_type(), f.is_nullable()))
            .collect();
        assert_eq!(
            rendered,
            [
                "qname Utf8 true",
                "flag UInt16 false",
                "rname Dictionary(Int32, Utf8) true",
                "pos Int32 true",
                "mapq UInt8 true",
                "cigar Utf8 true",
                "rnext Dictionary(Int32, Utf8) true",
                "pnext Int32 true",
                "tlen Int32 false",
                "seq Utf8 true",
                "qual Utf8 true",
                "end Int32 true",
                "tags Utf8 true",
                "NM Int64 true",
                "ML List(non-null Int64) true",
                "tag_layout Utf8 true",
            ]
        );
        assert_eq!(schema.version(), SCHEMA_VERSION_TAG_LAYOUT);
        assert_eq!(OutputSchema::new(&[], &[]).unwrap().version(), 1);
    }

    #[test]
    fn parses_tag_specs() {
        let t = |s: &str, ty| assert_eq!(s.parse::<PromotedTag>().unwrap().ty, ty);
        t("NM:i", PromotedType::Integer);
        t("XF:B:f", PromotedType::FloatArray);
        t("CB:Z", PromotedType::String);
        for bad in ["NM", "NMi", "N:i", "1M:i", "NM:q", "NM:B:c", "NMX:i"] {
            assert!(bad.parse::<PromotedTag>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn selection_keeps_order_and_refuses_mistakes() {
        let promoted = tags(&["NM:i"]);
        let names = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let schema = OutputSchema::new(&names(&["NM", "pos", "qname"]), &promoted).unwrap();
        assert_eq!(schema.column_names(), ["NM", "pos", "qname"]);

        let err = |s: &[&str], p: &[PromotedTag]| OutputSchema::new(&names(s), p).unwrap_err();
        assert_eq!(
            err(&["nope"], &promoted),
            SchemaError::UnknownColumn("nope".into())
        );
        assert_eq!(
            err(&["pos", "pos"], &promoted),
            SchemaError::DuplicateColumn("pos".into())
        );
        assert_eq!(
            err(&[], &tags(&["NM:i", "NM:f"])),
            SchemaError::DuplicateTag("NM".into())
        );
    }
}
