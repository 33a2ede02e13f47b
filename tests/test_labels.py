"""Label maps, names, palette and colouring against the tables of docs/method.md §2.2 / §2.4."""
import numpy as np
import pytest

from proda.data import labels as L

# docs/method.md §2.2, one row per 19-class train id: (name, Cityscapes id, 16-class id, 13-class id,
# SYNTHIA id); None = class absent from that setting.
TABLE = [
    ("road", 7, 0, 0, 3), ("sidewalk", 8, 1, 1, 4), ("building", 11, 2, 2, 2),
    ("wall", 12, 3, None, 21), ("fence", 13, 4, None, 5), ("pole", 17, 5, None, 7),
    ("traffic light", 19, 6, 3, 15), ("traffic sign", 20, 7, 4, 9), ("vegetation", 21, 8, 5, 6),
    ("terrain", 22, None, None, 16), ("sky", 23, 9, 6, 1), ("person", 24, 10, 7, 10),
    ("rider", 25, 11, 8, 17), ("car", 26, 12, 9, 8), ("truck", 27, None, None, 18),
    ("bus", 28, 13, 10, 19), ("train", 31, None, None, 20), ("motorcycle", 32, 14, 11, 12),
    ("bicycle", 33, 15, 12, 11),
]
COLUMN = {19: None, 16: 2, 13: 3}


def expected_map(n_class: int, id_col: int) -> dict[int, int]:
    """raw id -> train id for ``n_class`` from TABLE (id_col 1 = Cityscapes, 4 = SYNTHIA)."""
    out = {}
    for train19, row in enumerate(TABLE):
        tid = train19 if COLUMN[n_class] is None else row[COLUMN[n_class]]
        if tid is not None:
            out[row[id_col]] = tid
    return out


@pytest.mark.parametrize("n_class", [19, 16, 13])
def test_cityscapes_lut_maps_every_id(n_class):
    lut = L.id_to_trainid_lut("cityscapes", n_class)
    assert lut.shape == (256,) and lut.dtype == np.uint8
    want = expected_map(n_class, 1)
    assert len(want) == n_class
    for raw in range(256):
        assert lut[raw] == want.get(raw, 250), raw


@pytest.mark.parametrize("n_class", [19, 16, 13])
def test_synthia_lut_maps_every_id(n_class):
    lut = L.id_to_trainid_lut("synthia", n_class)
    assert lut.shape == (65536,)
    want = expected_map(n_class, 4)
    got = {raw: int(lut[raw]) for raw in np.flatnonzero(lut != 250)}
    assert got == want
    assert lut[0] == 250 and lut[22] == 250 and lut[13] == 250  # void, lane marking, parking slot


def test_gta5_lut_domain_and_void_list():
    lut = L.id_to_trainid_lut("gta5", 19)
    assert lut.shape == (35,)  # values 35..255 are outside the GTA5 domain
    void = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34]
    assert all(lut[v] == 250 for v in void)
    assert {raw: int(lut[raw]) for raw in range(35) if raw not in void} == expected_map(19, 1)
    with pytest.raises(ValueError, match="19"):
        L.id_to_trainid_lut("gta5", 16)


def test_unknown_kind_and_n_class():
    with pytest.raises(ValueError, match="mapillary"):
        L.id_to_trainid_lut("mapillary", 19)
    with pytest.raises(ValueError, match="17"):
        L.class_names(17)


def test_class_names_and_to19():
    assert L.class_names(19) == tuple(r[0] for r in TABLE)
    for n in (16, 13):
        names = [r[0] for r in TABLE if r[COLUMN[n]] is not None]
        assert L.class_names(n) == tuple(names)
        assert [L.CLASS_NAMES_19[i] for i in L.TO19[n]] == names


def test_miou13_excluded_are_wall_fence_pole():
    names16 = L.class_names(16)
    assert [names16[i] for i in L.MIOU13_EXCLUDED] == ["wall", "fence", "pole"]
    kept = [n for i, n in enumerate(names16) if i not in L.MIOU13_EXCLUDED]
    assert tuple(kept) == L.class_names(13)


def test_palette_values():
    assert L.PALETTE_19.shape == (19, 3)
    assert tuple(L.PALETTE_19[0]) == (128, 64, 128) and tuple(L.PALETTE_19[18]) == (119, 11, 32)
    assert tuple(L.palette(16)[9]) == (0, 130, 180)  # 16-class sky -> 19-class colour 10
    assert tuple(L.palette(13)[3]) == (250, 170, 30)  # 13-class traffic light


def test_colorize():
    label = np.array([[0, 13, 250], [9, 18, 255]], dtype=np.int64)
    rgb = L.colorize(label, 19)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[0, 0].tolist() == [128, 64, 128] and rgb[0, 1].tolist() == [0, 0, 142]
    assert rgb[0, 2].tolist() == [250, 250, 250] and rgb[1, 2].tolist() == [255, 255, 255]
    assert rgb[1, 0].tolist() == [152, 251, 152] and rgb[1, 1].tolist() == [119, 11, 32]
    rgb16 = L.colorize(label, 16)
    assert rgb16[1, 0].tolist() == [0, 130, 180]  # 16-class id 9 = sky
    assert rgb16[0, 1].tolist() == [0, 60, 100]  # 16-class id 13 = bus (19-class colour 15)
    assert rgb16[1, 1].tolist() == [18, 18, 18]  # 18 is outside [0, 16)
