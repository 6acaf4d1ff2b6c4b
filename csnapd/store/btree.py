"""The exception B-tree: logical chunk -> exceptions with sharemaps.

Index nodes route by key ranges; leaves hold, per logical chunk, the tuple of
exceptions (``format.Exc``: store chunk, sharemap).  The exception map
(exmap.py) is the only caller: it finds a leaf, edits it in place, then calls
``fixup`` which marks it dirty and restores the shape: split when over
capacity, merge or rebalance with a sibling when under a quarter full, grow or
shrink the depth at the root.  Nothing above exmap.py sees a leaf.

Invariants (checked by check.py and, in tests, by ``check_invariants``):
  * All leaves are at depth ``sb.depth``; keys strictly increase left to right
    and every key lies inside the range its parents route to it.
  * Node key 0 equals the lower bound of the node's range.
  * No leaf encodes to more than its capacity; no logical-chunk entry encodes
    to more than half a leaf (so a split always succeeds).
  * Every tree block is marked in the metadata bitmap.

Must not import the store facade, the journal or anything asyncio.
"""

from __future__ import annotations

from bisect import bisect_right

from . import format as fmt
from .bitmap import Allocator
from .blocks import Leaf, Node
from .cache import BlockCache
from .errors import StoreFullError
from .superblock import SuperState

KEY_LIMIT = 1 << 64
Path = list[tuple[Node, int]]


class BTree:
    """Navigation and shape maintenance of the exception tree."""

    def __init__(self, cache: BlockCache, alloc: Allocator, sbs: SuperState) -> None:
        self.cache, self.alloc, self.sbs = cache, alloc, sbs
        bs = sbs.f.block_size
        self.leaf_cap = fmt.leaf_capacity(bs)
        self.leaf_min = self.leaf_cap // 4
        self.entry_max = self.leaf_cap // 2
        self.node_cap = fmt.node_capacity(bs)
        self.node_min = max(2, self.node_cap // 4)

    # -- navigation -------------------------------------------------------
    def find(self, chunk: int) -> tuple[Path, Leaf, int, int]:
        """Path to the leaf covering ``chunk``, the leaf, and its key range."""
        f, get = self.sbs.f, self.cache.get
        addr, lo, hi = f.root, 0, KEY_LIMIT
        path: Path = []
        for _ in range(f.depth):
            node = get(addr, fmt.BlockKind.NODE)
            keys = node.keys
            i = bisect_right(keys, chunk) - 1
            if i < 0:
                i = 0
            path.append((node, i))
            lo = keys[i]
            if i + 1 < len(keys):
                hi = keys[i + 1]
            addr = node.children[i]
        return path, get(addr, fmt.BlockKind.LEAF), lo, hi

    # -- allocation -------------------------------------------------------
    def _new_block(self) -> int:
        addr = self.alloc.alloc_block()
        if addr is None:
            raise StoreFullError("no space left for B-tree metadata")
        return addr

    def _free(self, addr: int) -> None:
        self.alloc.free_block(addr)

    # -- shape ------------------------------------------------------------
    def fixup(self, path: Path, leaf: Leaf) -> None:
        """Mark an edited leaf dirty and restore the tree's shape around it.

        The editor recorded the changed chunks in ``leaf.changes``; a change of
        shape (split, merge, rebalance) journals the leaves whole instead.
        """
        self.cache.mark_dirty(leaf, whole=False)
        if leaf.nbytes > self.leaf_cap:
            sep, right = self._split_leaf(leaf)
            self._insert_child(path, len(path) - 1, sep, right)
        elif leaf.nbytes < self.leaf_min and path:
            self._underflow_leaf(path, leaf)

    def _split_point(self, sizes: list[int]) -> int:
        total, acc, best, best_i = sum(sizes), 0, None, 1
        for i in range(1, len(sizes)):
            acc += sizes[i - 1]
            worst = max(acc, total - acc)
            if best is None or worst < best:
                best, best_i = worst, i
        return best_i

    def _split_leaf(self, leaf: Leaf) -> tuple[int, int]:
        sizes = [fmt.entry_size(v) for v in leaf.vals]
        i = self._split_point(sizes)
        right = Leaf(self._new_block(), leaf.keys[i:], leaf.vals[i:], sum(sizes[i:]))
        del leaf.keys[i:], leaf.vals[i:]
        leaf.nbytes = sum(sizes[:i])
        self.cache.mark_dirty(leaf)
        self.cache.add_new(right)
        return right.keys[0], right.addr

    def _insert_child(self, path: Path, level: int, sep: int, child: int) -> None:
        f = self.sbs.f
        if level < 0:
            root = Node(self._new_block(), [0, sep], [f.root, child])
            self.cache.add_new(root)
            f.root, f.depth = root.addr, f.depth + 1
            self.sbs.touch()
            return
        node, i = path[level]
        node.keys.insert(i + 1, sep)
        node.children.insert(i + 1, child)
        self.cache.mark_dirty(node)
        if len(node.keys) > self.node_cap:
            m = len(node.keys) // 2
            right = Node(self._new_block(), node.keys[m:], node.children[m:])
            del node.keys[m:], node.children[m:]
            self.cache.add_new(right)
            self._insert_child(path, level - 1, right.keys[0], right.addr)

    def _underflow_leaf(self, path: Path, leaf: Leaf) -> None:
        parent, i = path[-1]
        if len(parent.children) > 1:
            j = i + 1 if i + 1 < len(parent.children) else i - 1
            sib = self.cache.get(parent.children[j], fmt.BlockKind.LEAF)
            left, right, ri = (leaf, sib, j) if j > i else (sib, leaf, i)
            if left.nbytes + right.nbytes <= self.leaf_cap * 3 // 4:
                left.keys += right.keys
                left.vals += right.vals
                left.nbytes += right.nbytes
                self.cache.mark_dirty(left)
                del parent.keys[ri], parent.children[ri]
                self._free(right.addr)
            else:
                self._rebalance_leaves(left, right)
                parent.keys[ri] = right.keys[0]
            self.cache.mark_dirty(parent)
        self._fix_node(path, len(path) - 1)

    def _rebalance_leaves(self, left: Leaf, right: Leaf) -> None:
        keys, vals = left.keys + right.keys, left.vals + right.vals
        sizes = [fmt.entry_size(v) for v in vals]
        i = self._split_point(sizes)
        left.keys, left.vals, left.nbytes = keys[:i], vals[:i], sum(sizes[:i])
        right.keys, right.vals, right.nbytes = keys[i:], vals[i:], sum(sizes[i:])
        self.cache.mark_dirty(left)
        self.cache.mark_dirty(right)

    def _fix_node(self, path: Path, level: int) -> None:
        node = path[level][0]
        if level == 0:
            self._shrink_root()
            return
        if len(node.children) >= self.node_min:
            return
        parent, i = path[level - 1]
        if len(parent.children) > 1:
            j = i + 1 if i + 1 < len(parent.children) else i - 1
            sib = self.cache.get(parent.children[j], fmt.BlockKind.NODE)
            left, right, ri = (node, sib, j) if j > i else (sib, node, i)
            if len(left.keys) + len(right.keys) <= self.node_cap * 3 // 4:
                left.keys += right.keys
                left.children += right.children
                del parent.keys[ri], parent.children[ri]
                self._free(right.addr)
            else:
                keys, kids = left.keys + right.keys, left.children + right.children
                m = len(keys) // 2
                left.keys, left.children = keys[:m], kids[:m]
                right.keys, right.children = keys[m:], kids[m:]
                parent.keys[ri] = right.keys[0]
                self.cache.mark_dirty(right)
            self.cache.mark_dirty(left)
            self.cache.mark_dirty(parent)
        self._fix_node(path, level - 1)

    def _shrink_root(self) -> None:
        f = self.sbs.f
        while f.depth > 0:
            root = self.cache.get(f.root, fmt.BlockKind.NODE)
            if len(root.children) != 1:
                return
            old = root.addr
            f.root, f.depth = root.children[0], f.depth - 1
            self.sbs.touch()
            self._free(old)
            if f.depth > 0:
                child = self.cache.get(f.root, fmt.BlockKind.NODE)
                if child.keys[0] != 0:
                    child.keys[0] = 0
                    self.cache.mark_dirty(child)

    # -- whole-tree helpers ----------------------------------------------
    def check_invariants(self) -> int:
        """Walk the tree asserting its shape; return the number of entries."""
        f = self.sbs.f
        return self._check(f.root, f.depth, 0, KEY_LIMIT, is_root=True)

    def _check(self, addr: int, depth: int, lo: int, hi: int, is_root: bool) -> int:
        if depth == 0:
            leaf = self.cache.get(addr, fmt.BlockKind.LEAF)
            assert leaf.nbytes <= self.leaf_cap, (addr, leaf.nbytes)
            assert all(lo <= k < hi for k in leaf.keys), (addr, lo, hi)
            assert leaf.keys == sorted(set(leaf.keys))
            return len(leaf.keys)
        node = self.cache.get(addr, fmt.BlockKind.NODE)
        assert node.keys[0] == lo, (addr, node.keys[0], lo)
        assert is_root or len(node.children) >= 1
        bounds = node.keys[1:] + [hi]
        return sum(self._check(c, depth - 1, k, b, False)
                   for c, k, b in zip(node.children, node.keys, bounds, strict=True))
