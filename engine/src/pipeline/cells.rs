//! Cuts a row group's rows into cells, counted from its first row whatever batches the rows
//! arrived in, and decides where row groups end.
//!
//! Parquet's column writer ends a data page only between the mini-batches it cuts each write
//! into, and it counts those from the start of each write. Written batch by batch, a file's page
//! boundaries — and so its bytes — would follow the batch size, which follows the thread count,
//! the memory plan and any filter. Written cell by cell, each cell one mini-batch
//! ([`CELL_ROWS`] is also the writer's `write_batch_size`), they follow the rows alone. A cell
//! also ends at [`CELL_BYTES`], so that a cell of long reads stays page-sized instead of holding
//! a thousand of them.
//!
//! For the same reason a row group ends on what is known when its rows are cut: its row count
//! and the Arrow bytes of its values ([`range_bytes`]), never on the encoders' size estimates,
//! which depend on how far the asynchronous encoding has got. The rows of a batch that do not
//! fill a cell are copied and carried to the next batch: at most one cell per batch. Byte
//! counts come from the arrays' offsets, a few reads per column per cell, so cutting does no
//! per-row work.

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch, UInt32Array};
use arrow_schema::{ArrowError, DataType};
use arrow_select::concat::concat_batches;
use arrow_select::take::take_record_batch;

/// Rows per write into a column writer; also its `write_batch_size`.
pub const CELL_ROWS: usize = 1024;
/// A cell ends at the row that takes its Arrow bytes to this: a data page's size.
pub const CELL_BYTES: usize = 1 << 20;

/// A row group ends after the cell at which one of these is reached.
#[derive(Clone, Copy, Debug)]
pub struct RowGroupLimits {
    pub rows: usize,
    /// Arrow bytes of the row group's values ([`range_bytes`]).
    pub bytes: usize,
}

/// Rows to write as one cell.
#[derive(Debug)]
pub struct Cell {
    pub rows: RecordBatch,
    /// The row group is full after this cell.
    pub ends_row_group: bool,
}

/// Cuts the rows of consecutive batches into cells and row groups.
#[derive(Debug)]
pub struct Cutter {
    limits: RowGroupLimits,
    /// Rows and bytes of the open row group's complete cells.
    rows: usize,
    bytes: usize,
    /// Rows of the next cell that have come so far (fewer than it needs), in their own buffers.
    carry: Option<RecordBatch>,
}

impl Cutter {
    pub fn new(limits: RowGroupLimits) -> Self {
        Self {
            limits,
            rows: 0,
            bytes: 0,
            carry: None,
        }
    }

    /// The complete cells that `batch` adds, in order; rows left over wait for the next batch.
    ///
    /// # Errors
    ///
    /// Returns an Arrow error when carried rows cannot be copied or joined (columns that do
    /// not match the schema).
    pub fn cut(&mut self, batch: &RecordBatch) -> Result<Vec<Cell>, ArrowError> {
        let mut cells = Vec::with_capacity(batch.num_rows() / CELL_ROWS + 1);
        let mut offset = 0;
        while offset < batch.num_rows() {
            let (carried_rows, carried_bytes) = self.carry.as_ref().map_or((0, 0), |carry| {
                (carry.num_rows(), batch_bytes(carry, 0, carry.num_rows()))
            });
            let room = self.next_cell_rows() - carried_rows;
            let available = room.min(batch.num_rows() - offset);
            let budget = CELL_BYTES.saturating_sub(carried_bytes);
            let taken = rows_to_bytes(batch, offset, available, budget);
            let bytes = carried_bytes + batch_bytes(batch, offset, taken);
            let complete = taken == room || bytes >= CELL_BYTES;
            let slice = batch.slice(offset, taken);
            offset += taken;
            let rows = match self.carry.take() {
                Some(carry) => concat_batches(batch.schema_ref(), [&carry, &slice])?,
                None if !complete => copied(&slice)?,
                None => slice,
            };
            if !complete {
                self.carry = Some(rows);
                break;
            }
            cells.push(self.complete(rows, bytes));
        }
        Ok(cells)
    }

    /// Ends the open row group where it stands: returns the carried rows, if any, as its last
    /// (short) cell.
    pub fn finish_row_group(&mut self) -> Option<RecordBatch> {
        self.rows = 0;
        self.bytes = 0;
        self.carry.take()
    }

    /// Rows the next cell takes: a full cell, or what is left below the row limit.
    fn next_cell_rows(&self) -> usize {
        // Never zero: a row group that reaches its row limit ends in `complete`.
        CELL_ROWS.min(self.limits.rows - self.rows).max(1)
    }

    /// Counts a complete cell of `bytes` (its rows' [`batch_bytes`]) into the row group.
    fn complete(&mut self, rows: RecordBatch, bytes: usize) -> Cell {
        self.rows += rows.num_rows();
        self.bytes += bytes;
        let ends_row_group = self.rows >= self.limits.rows || self.bytes >= self.limits.bytes;
        if ends_row_group {
            self.rows = 0;
            self.bytes = 0;
        }
        Cell {
            rows,
            ends_row_group,
        }
    }
}

/// A copy of `rows` in buffers of its own, so that carrying a few rows does not keep their
/// whole batch alive.
fn copied(rows: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let indices = UInt32Array::from_iter_values(0..rows.num_rows() as u32);
    take_record_batch(rows, &indices)
}

/// The fewest of `rows[offset..offset + most]` whose bytes reach `budget`, or `most`.
fn rows_to_bytes(rows: &RecordBatch, offset: usize, most: usize, budget: usize) -> usize {
    if batch_bytes(rows, offset, most) < budget {
        return most;
    }
    // Bytes grow with the rows taken: the smallest count that reaches the budget.
    let (mut low, mut high) = (1, most);
    while low < high {
        let middle = low + (high - low) / 2;
        if batch_bytes(rows, offset, middle) >= budget {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    high
}

/// Arrow bytes of rows `offset..offset + len` of every column ([`range_bytes`]).
pub fn batch_bytes(rows: &RecordBatch, offset: usize, len: usize) -> usize {
    rows.columns()
        .iter()
        .map(|column| range_bytes(column, offset, len))
        .sum()
}

/// Bytes of an array's values in rows `offset..offset + len` as Arrow holds them: offsets and
/// value bytes, fixed widths, dictionary keys, list offsets and elements.
///
/// Null bitmaps and dictionary values are left out: whether a slice has a bitmap, and what
/// its dictionary holds, depend on the batch it was cut from, not on its rows.
pub fn range_bytes(array: &dyn Array, offset: usize, len: usize) -> usize {
    let end = offset + len;
    match array.data_type() {
        DataType::Utf8 => array.as_string_opt::<i32>().map_or(0, |text| {
            let offsets = text.value_offsets();
            let values = offsets
                .get(end)
                .zip(offsets.get(offset))
                .map(|(e, s)| e - s);
            values.and_then(|v| usize::try_from(v).ok()).unwrap_or(0) + 4 * len
        }),
        DataType::List(_) => array.as_list_opt::<i32>().map_or(0, |list| {
            let offsets = list.value_offsets();
            let child = |i: usize| offsets.get(i).and_then(|&o| usize::try_from(o).ok());
            let elements = match (child(offset), child(end)) {
                (Some(start), Some(stop)) if start <= stop => {
                    range_bytes(list.values(), start, stop - start)
                }
                _ => 0,
            };
            elements + 4 * len
        }),
        DataType::Dictionary(key, _) => key.primitive_width().unwrap_or(0) * len,
        other => other.primitive_width().unwrap_or(0) * len,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int32Array, StringArray};
    use arrow_schema::{Field, Schema};

    use super::*;

    fn batch(from: i32, rows: i32) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int32, false),
            Field::new("text", DataType::Utf8, true),
        ]));
        let numbers: ArrayRef = Arc::new(Int32Array::from_iter_values(from..from + rows));
        let text: ArrayRef = Arc::new(StringArray::from_iter(
            (from..from + rows).map(|i| (i % 7 != 0).then(|| "x".repeat(i as usize % 13))),
        ));
        RecordBatch::try_new(schema, vec![numbers, text]).unwrap()
    }

    /// Cuts the rows `0..total` arriving in batches of `batch_rows`; returns each row group's
    /// cells as (first row, rows).
    fn cut_all(total: i32, batch_rows: i32, limits: RowGroupLimits) -> Vec<Vec<(i32, usize)>> {
        let mut cutter = Cutter::new(limits);
        let mut groups = vec![Vec::new()];
        let first = |rows: &RecordBatch| {
            rows.column(0)
                .as_primitive::<arrow_array::types::Int32Type>()
                .value(0)
        };
        for from in (0..total).step_by(batch_rows as usize) {
            let rows = batch(from, batch_rows.min(total - from));
            for cell in cutter.cut(&rows).unwrap() {
                groups
                    .last_mut()
                    .unwrap()
                    .push((first(&cell.rows), cell.rows.num_rows()));
                if cell.ends_row_group {
                    groups.push(Vec::new());
                }
            }
        }
        if let Some(rest) = cutter.finish_row_group() {
            groups
                .last_mut()
                .unwrap()
                .push((first(&rest), rest.num_rows()));
        }
        groups.retain(|g| !g.is_empty());
        groups
    }

    #[test]
    fn cells_and_row_groups_do_not_depend_on_the_batch_size() {
        for limits in [
            RowGroupLimits {
                rows: 2_500,
                bytes: usize::MAX,
            },
            RowGroupLimits {
                rows: usize::MAX,
                bytes: 20_000,
            },
        ] {
            let expected = cut_all(10_000, 10_000, limits);
            assert!(expected.len() > 2, "{limits:?}: {expected:?}");
            for batch_rows in [1, 7, 1_000, 1_024, 3_001] {
                assert_eq!(
                    cut_all(10_000, batch_rows, limits),
                    expected,
                    "{batch_rows}"
                );
            }
        }
    }

    #[test]
    fn a_row_limit_below_a_cell_cuts_cells_at_the_limit() {
        let groups = cut_all(
            1_000,
            333,
            RowGroupLimits {
                rows: 300,
                bytes: usize::MAX,
            },
        );
        assert_eq!(groups[0], [(0, 300)]);
        assert_eq!(groups.last().unwrap(), &[(900, 100)]);
    }

    #[test]
    fn bytes_of_a_range_are_those_of_its_slice() {
        let rows = batch(0, 100);
        let head = rows.slice(0, 40);
        let tail = rows.slice(40, 60);
        assert_eq!(batch_bytes(&head, 0, 40), batch_bytes(&rows, 0, 40));
        assert_eq!(batch_bytes(&tail, 0, 60), batch_bytes(&rows, 40, 60));
        let whole = batch_bytes(&rows, 0, 100);
        assert_eq!(
            whole,
            batch_bytes(&rows, 0, 40) + batch_bytes(&rows, 40, 60)
        );
        assert!(whole > 100 * (4 + 4));
    }

    #[test]
    fn cells_of_large_rows_end_at_their_byte_size() {
        let schema = Arc::new(Schema::new(vec![Field::new("read", DataType::Utf8, false)]));
        let read = "A".repeat(100_000);
        let text: ArrayRef = Arc::new(StringArray::from_iter_values((0..95).map(|_| &read)));
        let rows = RecordBatch::try_new(schema, vec![text]).unwrap();
        let limits = RowGroupLimits {
            rows: usize::MAX,
            bytes: usize::MAX,
        };
        let mut cutter = Cutter::new(limits);
        let cells = cutter.cut(&rows).unwrap();
        // 100,004 bytes a row: the 11th reaches 1 MiB.
        assert_eq!(cells.len(), 8);
        assert!(cells.iter().all(|cell| cell.rows.num_rows() == 11));
        assert_eq!(cutter.finish_row_group().unwrap().num_rows(), 7);
    }
}
