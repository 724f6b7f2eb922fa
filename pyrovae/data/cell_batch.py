"""A mini-batch of streamed cells: sparse counts on a gene panel, library sizes, labels and ids, in one buffer."""

from __future__ import annotations

from dataclasses import dataclass, field

import scipy.sparse as sp
import torch

from pyrovae.data.tahoe import CellBlock

_FIELDS = ("indptr", "indices", "values", "library", "ids")
_LABEL = "label:"


@dataclass
class CellBatch:
    """A mini-batch of cells: sparse counts on the gene panel (CSR), library sizes, label codes and cell ids.

    ``counts`` is the dense (cells, panel genes) float32 tensor, built where the batch lives: after
    ``batch.to("cuda")`` only the sparse parts cross to the GPU and the dense matrix is assembled there. A batch
    made by :meth:`from_block` keeps all its tensors in one buffer, so that it crosses to another process (from a
    DataLoader worker), is pinned, or is copied to a device as one block of memory rather than one per tensor.
    """

    indptr: torch.Tensor  # (cells + 1,) int64
    indices: torch.Tensor  # (non-zeros,) int64 panel positions
    values: torch.Tensor  # (non-zeros,) float32
    num_genes: int
    library: torch.Tensor  # (cells,) float32, total counts over the whole vocabulary
    labels: dict[str, torch.Tensor]  # name -> (cells,) int64 codes
    ids: torch.Tensor  # (cells,) int64 global cell ids
    _dense: torch.Tensor | None = field(default=None, repr=False)
    _buffer: torch.Tensor | None = field(default=None, repr=False)  # uint8: the tensors above, end to end
    _layout: tuple = field(default=(), repr=False)  # (key, dtype, length, byte offset) of each, in _buffer

    @classmethod
    def from_block(cls, block: CellBlock) -> CellBatch:
        csr = block.counts
        arrays = {"indptr": csr.indptr, "indices": csr.indices, "values": csr.data, "library": block.library,
                  "ids": block.ids, **{_LABEL + name: codes for name, codes in block.labels.items()}}
        layout, size = [], 0
        for key, array in arrays.items():
            dtype = torch.float32 if key in ("values", "library") else torch.int64
            layout.append((key, dtype, len(array), size))
            size += -(-len(array) * dtype.itemsize // 8) * 8  # each part 8-byte aligned
        batch = cls._from_buffer(torch.empty(size, dtype=torch.uint8), tuple(layout), csr.shape[1])
        for key, array in arrays.items():
            batch._part(key).numpy()[:] = array  # cast in the copy (int32 CSR indices to int64)
        return batch

    @classmethod
    def _from_buffer(cls, buffer: torch.Tensor, layout: tuple, num_genes: int) -> CellBatch:
        parts = {key: buffer[offset:offset + length * dtype.itemsize].view(dtype)
                 for key, dtype, length, offset in layout}
        labels = {key[len(_LABEL):]: parts[key] for key, *_ in layout if key.startswith(_LABEL)}
        return cls(parts["indptr"], parts["indices"], parts["values"], num_genes, parts["library"], labels,
                   parts["ids"], _buffer=buffer, _layout=layout)

    def _part(self, key: str) -> torch.Tensor:
        return self.labels[key[len(_LABEL):]] if key.startswith(_LABEL) else getattr(self, key)

    def _packed(self) -> bool:
        """Whether every tensor still lies in ``_buffer`` where :meth:`from_block` put it."""
        if self._buffer is None or len(self._layout) != len(_FIELDS) + len(self.labels):
            return False
        start = self._buffer.data_ptr()
        for key, dtype, length, offset in self._layout:
            part = self.labels.get(key[len(_LABEL):]) if key.startswith(_LABEL) else getattr(self, key)
            if part is None or part.dtype != dtype or part.shape != (length,) or part.device != self._buffer.device \
                    or (length and part.data_ptr() != start + offset):
                return False
        return True

    def __len__(self) -> int:
        return len(self.library)

    @property
    def counts(self) -> torch.Tensor:
        if self._dense is None:
            if self.values.device.type == "cpu" and self.values.dtype in (torch.float32, torch.float64):
                # scipy's CSR -> dense loop (repeats summed, as index_put_ sums them) is 3x torch's scatter
                csr = sp.csr_matrix((self.values.numpy(), self.indices.numpy(), self.indptr.numpy()),
                                    shape=(len(self), self.num_genes))
                self._dense = torch.from_numpy(csr.toarray())
            else:
                rows = torch.repeat_interleave(torch.arange(len(self), device=self.values.device), self.indptr.diff(),
                                               output_size=len(self.values))
                dense = torch.zeros(len(self), self.num_genes, device=self.values.device, dtype=self.values.dtype)
                self._dense = dense.index_put_((rows, self.indices), self.values, accumulate=True)
        return self._dense

    def __getattr__(self, name: str) -> torch.Tensor:
        labels = self.__dict__.get("labels", {})
        if name in labels:  # batch.drug, batch.cell_line, batch.plate
            return labels[name]
        raise AttributeError(name)

    def _map(self, fn) -> CellBatch:
        if self._packed():  # one copy of the buffer, not one per tensor
            return self._from_buffer(fn(self._buffer), self._layout, self.num_genes)
        return CellBatch(fn(self.indptr), fn(self.indices), fn(self.values), self.num_genes, fn(self.library),
                         {k: fn(v) for k, v in self.labels.items()}, fn(self.ids))

    def to(self, device, non_blocking: bool = False) -> CellBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> CellBatch:
        return self._map(torch.Tensor.pin_memory)

    def __getstate__(self):
        if self._packed():  # pickled (to another process) as one tensor: one block of shared memory
            return {"_buffer": self._buffer, "_layout": self._layout, "num_genes": self.num_genes}
        return {k: v for k, v in self.__dict__.items() if k not in ("_dense", "_buffer", "_layout")}

    def __setstate__(self, state):
        if "_layout" in state:
            state = self._from_buffer(state["_buffer"], state["_layout"], state["num_genes"]).__dict__
        self.__dict__.update({"_buffer": None, "_layout": ()}, **state)
        self._dense = None


__all__ = ["CellBatch"]
