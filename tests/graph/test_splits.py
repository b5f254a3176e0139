"""Pass: automatic Split insertion, with Caffe's names (insert_splits.cpp)."""

import pytest

from netforge.errors import GraphError
from netforge.graph.splits import insert_splits, split_blob_name, split_layer_name
from tests.graph.passes import INPUT, TWO_INPUTS, param


def test_split_names_are_caffes():
    assert split_layer_name("data", "in", 0) == "data_in_0_split"
    assert split_blob_name("data", "in", 0, 2) == "data_in_0_split_2"


def test_split_naming_follows_caffe():
    net = param(INPUT + """
      layer { name: "a" type: "ReLU" bottom: "data" top: "a" }
      layer { name: "b" type: "ReLU" bottom: "data" top: "b" }
      layer { name: "c" type: "Eltwise" bottom: "data" bottom: "a" top: "c" }
    """)
    split = insert_splits(net)
    names = [layer.name for layer in split.layer]
    assert names == ["in", "data_in_0_split", "a", "b", "c"]
    s = split.layer[1]
    assert list(s.bottom) == ["data"]
    assert list(s.top) == [f"data_in_0_split_{k}" for k in range(3)]
    assert [list(layer.bottom) for layer in split.layer[2:]] == [
        ["data_in_0_split_0"], ["data_in_0_split_1"], ["data_in_0_split_2", "a"]]


def test_split_of_a_second_top_uses_its_index_and_leaves_the_input_unchanged():
    net = param(TWO_INPUTS + """
      layer { name: "p" type: "ReLU" bottom: "y" top: "p" }
      layer { name: "q" type: "Sigmoid" bottom: "y" top: "q" }
      layer { name: "r" type: "TanH" bottom: "x" top: "r" }
    """)
    before = net.SerializeToString()
    split = insert_splits(net)
    assert net.SerializeToString() == before  # a copy; the input is not touched
    assert [layer.name for layer in split.layer] == ["two", "y_two_1_split", "p", "q", "r"]
    assert list(split.layer[1].top) == ["y_two_1_split_0", "y_two_1_split_1"]
    assert list(split.layer[4].bottom) == ["x"]  # read once: no split


def test_in_place_rewrite_splits_the_latest_producer():
    # "data" rewritten in place by r: the two later readers read r's top, so the split is
    # named after r (the last producer of the name), not after the Input.
    net = param(INPUT + """
      layer { name: "r" type: "ReLU" bottom: "data" top: "data" }
      layer { name: "s" type: "Sigmoid" bottom: "data" top: "s" }
      layer { name: "t" type: "TanH" bottom: "data" top: "t" }
    """)
    split = insert_splits(net)
    assert [layer.name for layer in split.layer] == ["in", "r", "data_r_0_split", "s", "t"]
    assert list(split.layer[1].bottom) == ["data"] and list(split.layer[1].top) == ["data"]
    assert [list(split.layer[k].bottom) for k in (3, 4)] == [["data_r_0_split_0"],
                                                            ["data_r_0_split_1"]]


def test_no_split_for_single_consumer_or_in_place_chain():
    net = param(INPUT + """
      layer { name: "r" type: "ReLU" bottom: "data" top: "data" }
      layer { name: "s" type: "Sigmoid" bottom: "data" top: "s" }
    """)
    assert [layer.type for layer in insert_splits(net).layer] == ["Input", "ReLU", "Sigmoid"]


def test_loss_weighted_top_counts_as_a_consumer_and_weight_moves_to_split():
    net = param(INPUT + """
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" loss_weight: 0.5
              inner_product_param { num_output: 2 } }
      layer { name: "r" type: "ReLU" bottom: "ip" top: "r" }
    """)
    split = insert_splits(net)
    ip, s = split.layer[1], split.layer[2]
    assert not ip.loss_weight
    assert s.name == "ip_ip_0_split" and list(s.loss_weight) == [0.5, 0.0]
    assert list(split.layer[3].bottom) == ["ip_ip_0_split_1"]


def test_loss_weighted_top_nobody_reads_gets_no_split():
    net = param(INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" '
                'loss_weight: 2 }')
    split = insert_splits(net)
    assert [layer.name for layer in split.layer] == ["in", "r"]
    assert list(split.layer[1].loss_weight) == [2.0]


def test_unknown_bottom_is_refused_with_its_layer_and_index():
    net = param(INPUT + 'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "nope" '
                'top: "e" }')
    with pytest.raises(GraphError, match='layer "e" \\(Eltwise\\): unknown bottom blob "nope" '
                       '\\(bottom index 1\\)'):
        insert_splits(net)
