from qspos.core.union_find import UnionFind


def test_unions_partition_the_items_in_the_order_they_were_added():
    sets = UnionFind("abcdef")
    assert sets.union("a", "c") == "a"
    sets.union("e", "d")
    assert sets.union("c", "d") == "a"  # the first argument's root stays the root
    assert sets.groups() == [["a", "c", "d", "e"], ["b"], ["f"]]
    assert sets.find("e") == "a"


def test_added_items_start_alone_and_adding_again_changes_nothing():
    sets: UnionFind[int] = UnionFind()
    for i in range(4):
        sets.add(i)
    sets.union(3, 1)
    sets.add(1)
    assert sets.groups() == [[0], [1, 3], [2]]
    assert sets.union(1, 3) == 3
