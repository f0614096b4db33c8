"""Label-safe augmentation (issue 17 part 3): side-named classes refuse explicit flips, turn default ones off."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthmed.config import Config, load_config, with_overrides
from synthmed.data.orientation import active_augmentations, orientation_sensitive, safe_augmentations, side_word
from synthmed.errors import ConfigError

BLOOD = ["basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte", "monocyte", "neutrophil",
         "platelet"]
ORGAN = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
         "lung-right", "pancreas", "spleen"]
# Class names without a side: MedMNIST catalogue names, OCT2017 folders, CT / X-ray / derm / path classes.
NO_SIDE = [
    *BLOOD, "CNV", "DME", "DRUSEN", "NORMAL", "choroidal neovascularization", "diabetic macular edema", "drusen",
    "normal", "pneumonia", "COVID-19", "Viral Pneumonia", "Lung_Opacity", "atelectasis", "cardiomegaly", "effusion",
    "pleural", "pneumothorax", "hemorrhage", "intraparenchymal", "subdural", "epidural", "subarachnoid",
    "intraventricular", "Glioma", "Meningioma", "pituitary", "no_tumor", "L1", "L2", "L5", "T12", "C7",
    "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
    "cancer-associated stroma", "colorectal adenocarcinoma epithelium", "akiec", "bcc", "bkl", "df", "mel", "nv",
    "vasc", "Leukocytes", "Podocytes", "Thick Ascending Limb", "Distal Convoluted Tubule", "malignant",
    "normal, benign", "bright_field", "upright", "copyright", "lateral", "PA", "AP", "os_trigonum", "dextrose",
    "bilateral", "Ileum", "Rectum", "Lymphoma", "relapse", "0", "1", "class_3",
]
SIDES = [
    ("kidney-left", "left"), ("Right lung", "Right"), ("lung_R", "R"), ("L_femur", "L"), ("LeftHand", "Left"),
    ("handRight", "Right"), ("fundus OD", "OD"), ("OS-fundus", "OS"), ("laterality_unknown", "laterality"),
    ("breast.sinister", "sinister"), ("dexter", "dexter"), ("ipsilateral", "ipsilateral"),
    ("contralateral nodes", "contralateral"), ("dextrocardia", "dextrocardia"), ("levoscoliosis", "levoscoliosis"),
    ("situs inversus", "situs"), ("dextroposition", "dextroposition"), ("sinistral", "sinistral"), ("R", "R"), ("lt knee", "lt"), ("KNEE_RT", "RT"),
]


@pytest.mark.parametrize(("name", "word"), SIDES)
def test_names_with_a_side(name: str, word: str) -> None:
    assert side_word(name) == word
    sensitive, reason = orientation_sensitive(["other", name], None)
    assert sensitive and name in reason and word in reason


@pytest.mark.parametrize("name", NO_SIDE)
def test_no_false_positives(name: str) -> None:
    assert side_word(name) is None, name


def test_dataset_level_decisions() -> None:
    assert orientation_sensitive(BLOOD, None) == (False, "no class name names a side")
    assert orientation_sensitive(ORGAN, None)[0]
    assert orientation_sensitive(BLOOD, True) == (True, "data.orientation_matters is true")
    assert orientation_sensitive(ORGAN, False) == (False, "data.orientation_matters is false")  # the user insists
    assert not orientation_sensitive(["eye os", "od"], None)[0]  # eye sides only when written OD / OS


def _cfg(tmp_path: Path, text: str, overrides: list[str] | None = None) -> Config:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path, overrides)


def test_defaults_are_turned_off_with_notes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "generator: {kind: stable_diffusion}\n")
    assert cfg.classifier.augment.hflip and cfg.generator.stable_diffusion.hflip  # both on by default
    new, notes, active = safe_augmentations(cfg, ORGAN)
    aug = new.classifier.augment
    assert (aug.hflip, aug.vflip, aug.rot90, new.generator.stable_diffusion.hflip) == (False, False, False, False)
    assert cfg.classifier.augment.hflip  # the input config is untouched
    assert len(notes) == 4 and all("turned off" in n and "class 'femur-left' names a side" in n for n in notes)
    assert any(n.startswith("classifier.augment.hflip turned off") for n in notes)
    assert any(n.startswith("generator.stable_diffusion.hflip turned off") for n in notes)
    assert active == ["classifier.augment.brightness=0.1", "classifier.augment.contrast=0.1"]
    again, notes2, _ = safe_augmentations(new, ORGAN)  # idempotent: turned-off flips are not "explicit true"
    assert notes2 == [] and again is new


def test_not_sensitive_keeps_everything(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "generator: {kind: ddpm, ddpm: {hflip: true, vflip: true}}\n")
    new, notes, active = safe_augmentations(cfg, BLOOD)
    assert new is cfg and notes == []
    assert active[:5] == ["classifier.augment.hflip", "classifier.augment.vflip", "classifier.augment.rot90",
                          "generator.ddpm.hflip", "generator.ddpm.vflip"]


@pytest.mark.parametrize(("yaml_text", "overrides", "key"), [
    ("generator: {kind: ddpm, ddpm: {hflip: true}}\n", None, "generator.ddpm.hflip"),
    ("classifier: {augment: {rot90: true}}\n", None, "classifier.augment.rot90"),
    ("{}\n", ["classifier.augment.vflip=true"], "classifier.augment.vflip"),
    ("generator: {kind: stable_diffusion, stable_diffusion: {hflip: true}}\n", None, "generator.stable_diffusion.hflip"),
    ("generator: {kind: edm, edm: {rot90: true}}\n", None, "generator.edm.rot90"),
])
def test_explicit_flips_are_refused(tmp_path: Path, yaml_text: str, overrides: list[str] | None, key: str) -> None:
    cfg = _cfg(tmp_path, yaml_text, overrides)
    with pytest.raises(ConfigError) as err:
        safe_augmentations(cfg, ORGAN)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{key}=true is refused") and "femur-left" in msg
    assert "data.orientation_matters=false" in msg


def test_the_shipped_bloodmnist_config_on_a_sided_dataset() -> None:
    cfg = load_config(Path(__file__).parents[1] / "configs" / "bloodmnist-lt.yaml")
    new, notes, _ = safe_augmentations(cfg, BLOOD)  # blood cells have no side: explicit flips stay
    assert new.generator.ddpm.hflip and notes == []
    with pytest.raises(ConfigError, match=r"^generator\.ddpm\.hflip=true is refused"):
        safe_augmentations(cfg, ORGAN)
    user_insists = with_overrides(cfg, ["data.orientation_matters=false"])
    assert safe_augmentations(user_insists, ORGAN).config.generator.ddpm.hflip


def test_only_the_active_generator_counts(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "generator: {kind: ddpm, stable_diffusion: {hflip: true}}\n")
    new, notes, active = safe_augmentations(cfg, ORGAN)  # the unused SD section's explicit flip is not refused
    assert len(notes) == 3 and all(n.startswith("classifier.augment.") for n in notes)
    assert new.generator.stable_diffusion.hflip and not any(a.startswith("generator.") for a in active)


def test_orientation_matters_without_sided_names(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "data: {orientation_matters: true}\ngenerator: {kind: edm}\n")
    new, notes, _ = safe_augmentations(cfg, BLOOD)
    assert not new.classifier.augment.hflip and len(notes) == 3
    assert all("data.orientation_matters is true" in n for n in notes)


def test_display_names_count(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "data: {display_names: {'0': left eye, '1': right eye}}\n")
    new, notes, _ = safe_augmentations(cfg, ["0", "1"])
    assert notes and not new.classifier.augment.hflip


def test_policies_and_grid_turning_flips_on_are_explicit(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "classifier: {augment: {hflip: false}}\n"
                         "run: {policies: {flipped: {classifier.augment.hflip: true}, plain: {mix.policy: real_only}}}\n")
    with pytest.raises(ConfigError, match=r"^run\.policies\.flipped: classifier\.augment\.hflip=true is refused"):
        safe_augmentations(cfg, ORGAN)
    cfg = _cfg(tmp_path, "sweep: {grid: {classifier.augment.rot90: [false, true]}}\n")
    with pytest.raises(ConfigError, match=r"^sweep\.grid: classifier\.augment\.rot90=true is refused"):
        safe_augmentations(cfg, ORGAN)
    cfg = _cfg(tmp_path, "run: {policies: {noflip: {classifier: {augment: {hflip: false}}}}}\n")
    assert len(safe_augmentations(cfg, ORGAN).notes) == 3  # turning a flip off per policy is fine


def test_active_lists_mixup_and_jitter(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "classifier: {mixup: 0.2, augment: {hflip: false, vflip: false, rot90: false, brightness: 0}}\n")
    assert active_augmentations(cfg) == ["classifier.augment.contrast=0.1", "classifier.mixup=0.2"]
