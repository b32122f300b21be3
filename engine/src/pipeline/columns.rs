//! Column buffers the decoder appends to, turned into Arrow arrays once per batch.
//!
//! Arrow's generic builders would do, but these write straight into the byte and offset
//! vectors that become the array's buffers, so a batch's arrays are built without copying and
//! appending a value is a `Vec` push.

use std::sync::Arc;

use arrow_array::types::Int32Type;
use arrow_array::{
    ArrayRef, ArrowPrimitiveType, DictionaryArray, ListArray, PrimitiveArray, StringArray,
};
use arrow_buffer::{Buffer, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, Field};

/// Text values were longer than an Arrow `Utf8` array can address (2 GiB per batch).
#[derive(Debug, thiserror::Error)]
#[error("a batch's text exceeds 2 GiB; lower batch_memory_mb")]
pub struct TextOverflow;

/// A `Utf8` column: bytes are appended to [`TextColumn::buffer`], then the value is closed.
pub struct TextColumn {
    values: Vec<u8>,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
}

impl TextColumn {
    pub fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            values: Vec::with_capacity(bytes),
            offsets,
            nulls: NullBufferBuilder::new(rows),
        }
    }

    /// The value bytes; append the current value here, then call [`TextColumn::close_value`].
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.values
    }

    /// Length of the current (not yet closed) value.
    pub fn open_value_len(&self) -> usize {
        self.values.len() - self.offsets.last().copied().unwrap_or(0) as usize
    }

    /// Ends the current value.
    pub fn close_value(&mut self) -> Result<(), TextOverflow> {
        self.offsets
            .push(i32::try_from(self.values.len()).map_err(|_| TextOverflow)?);
        self.nulls.append_non_null();
        Ok(())
    }

    /// Appends a whole value.
    pub fn push(&mut self, value: &[u8]) -> Result<(), TextOverflow> {
        self.values.extend_from_slice(value);
        self.close_value()
    }

    /// Appends a null, dropping any bytes of an open value.
    pub fn push_null(&mut self) {
        let end = self.offsets.last().copied().unwrap_or(0);
        self.values.truncate(end as usize);
        self.offsets.push(end);
        self.nulls.append_null();
    }

    /// Builds the array, validating that the bytes are UTF-8.
    pub fn finish(mut self) -> Result<ArrayRef, ArrowError> {
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        let array =
            StringArray::try_new(offsets, Buffer::from_vec(self.values), self.nulls.finish())?;
        Ok(Arc::new(array))
    }
}

impl Default for TextColumn {
    fn default() -> Self {
        Self::with_capacity(0, 0)
    }
}

/// A primitive column with optional nulls.
pub struct PrimitiveColumn<T: ArrowPrimitiveType> {
    values: Vec<T::Native>,
    nulls: NullBufferBuilder,
}

impl<T: ArrowPrimitiveType> PrimitiveColumn<T> {
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            values: Vec::with_capacity(rows),
            nulls: NullBufferBuilder::new(rows),
        }
    }

    pub fn push(&mut self, value: T::Native) {
        self.values.push(value);
        self.nulls.append_non_null();
    }

    pub fn push_null(&mut self) {
        self.values.push(T::Native::default());
        self.nulls.append_null();
    }

    pub fn push_option(&mut self, value: Option<T::Native>) {
        match value {
            Some(v) => self.push(v),
            None => self.push_null(),
        }
    }

    pub fn finish_array(mut self) -> PrimitiveArray<T> {
        PrimitiveArray::new(ScalarBuffer::from(self.values), self.nulls.finish())
    }

    pub fn finish(self) -> ArrayRef {
        Arc::new(self.finish_array())
    }
}

impl<T: ArrowPrimitiveType> Default for PrimitiveColumn<T> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

/// A dictionary column whose values are the file's reference names, keyed by `refID`.
#[derive(Default)]
pub struct ReferenceColumn {
    keys: PrimitiveColumn<Int32Type>,
}

impl ReferenceColumn {
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            keys: PrimitiveColumn::with_capacity(rows),
        }
    }

    /// Appends a reference ID the caller has checked is -1 or in range; -1 is null.
    pub fn push(&mut self, reference_sequence_id: i32) {
        if reference_sequence_id < 0 {
            self.keys.push_null();
        } else {
            self.keys.push(reference_sequence_id);
        }
    }

    pub fn finish(self, names: &ArrayRef) -> Result<ArrayRef, ArrowError> {
        let array = DictionaryArray::try_new(self.keys.finish_array(), Arc::clone(names))?;
        Ok(Arc::new(array))
    }
}

/// A `List` column of non-null primitive items.
pub struct ListColumn<T: ArrowPrimitiveType> {
    items: Vec<T::Native>,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
}

impl<T: ArrowPrimitiveType> ListColumn<T> {
    pub fn with_capacity(rows: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            items: Vec::new(),
            offsets,
            nulls: NullBufferBuilder::new(rows),
        }
    }

    pub fn push(&mut self, items: impl Iterator<Item = T::Native>) -> Result<(), TextOverflow> {
        self.items.extend(items);
        self.offsets
            .push(i32::try_from(self.items.len()).map_err(|_| TextOverflow)?);
        self.nulls.append_non_null();
        Ok(())
    }

    pub fn push_null(&mut self) {
        self.offsets.push(self.offsets.last().copied().unwrap_or(0));
        self.nulls.append_null();
    }

    pub fn finish(mut self) -> Result<ArrayRef, ArrowError> {
        let items = PrimitiveArray::<T>::new(ScalarBuffer::from(self.items), None);
        let field = Arc::new(Field::new_list_field(T::DATA_TYPE, false));
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        let array = ListArray::try_new(field, offsets, Arc::new(items), self.nulls.finish())?;
        Ok(Arc::new(array))
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::Array;

    use super::*;

    #[test]
    fn text_column_closes_values_and_nulls() {
        let mut column = TextColumn::with_capacity(3, 8);
        column.buffer().extend_from_slice(b"ab");
        column.close_value().unwrap();
        column.buffer().extend_from_slice(b"half-written");
        column.push_null();
        column.push(b"c").unwrap();
        let array = column.finish().unwrap();
        let array = array.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            array.iter().collect::<Vec<_>>(),
            [Some("ab"), None, Some("c")]
        );
    }

    #[test]
    fn text_column_refuses_invalid_utf8() {
        let mut column = TextColumn::with_capacity(1, 1);
        column.push(&[0xff]).unwrap();
        assert!(column.finish().is_err());
    }
}
