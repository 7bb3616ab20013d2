import pytest

from uti.config import AudioConfig, UTIConfig, config_from_yaml, load_config
from uti.errors import ConfigError


def test_default_preset_loads_with_no_files():
    cfg = load_config("default")
    assert cfg.text.kind == "byte" and cfg.audio.weights == "random:0" and cfg.image.weights == "random:0"
    assert load_config(None) == cfg


def test_unknown_top_level_key_is_named():
    with pytest.raises(ConfigError, match="'auido'"):
        config_from_yaml("auido: {model: encodec_24khz}\n")


def test_unknown_nested_key_is_named_with_its_path():
    with pytest.raises(ConfigError, match=r"audio.*'bandwith'"):
        config_from_yaml("audio: {bandwith: 6.0}\n")


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError, match="image.proc_size"):
        config_from_yaml("image: {proc_size: big}\n")


def test_yaml_file_and_tuple_fields(tmp_path):
    path = tmp_path / "uti.yaml"
    path.write_text("image:\n  proc_size: 32\n  arch: {block_out_channels: [16, 32]}\naudio: {bandwidth: 12.0}\n")
    cfg = load_config(path)
    assert cfg.image.proc_size == 32 and cfg.image.arch.block_out_channels == (16, 32)
    assert cfg.audio.bandwidth == 12.0


def test_missing_file_or_preset_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config(tmp_path / "nope.yaml")


def test_configs_are_keyword_only():
    with pytest.raises(TypeError):
        UTIConfig(None)  # type: ignore[misc]


def test_invalid_values_rejected():
    with pytest.raises(ConfigError, match="audio.model"):
        config_from_yaml("audio: {model: encodec_16khz}\n")
    with pytest.raises(ConfigError, match="text.path"):
        config_from_yaml("text: {kind: hf}\n")


def test_a_modality_left_out_or_kind_none_has_no_codec():
    only_text = config_from_yaml("text: {kind: byte}\n")
    assert only_text.modalities == ("text",) and only_text.image is None and only_text.audio is None
    assert config_from_yaml("text: {kind: byte}\naudio: {kind: none}\nimage:\n") == only_text
    assert config_from_yaml("audio: {}\n").audio == AudioConfig()  # an empty mapping is the default codec
    assert load_config("default").modalities == ("text", "image", "audio")  # the preset still has all three


def test_kind_none_with_settings_or_no_codec_at_all_is_refused():
    with pytest.raises(ConfigError, match=r"audio.kind is 'none'.*weights"):
        config_from_yaml("text: {kind: byte}\naudio: {kind: none, weights: pretrained}\n")
    with pytest.raises(ConfigError, match="names no codec"):
        config_from_yaml("limits: {max_channels: 2}\n")
    with pytest.raises(ConfigError, match=r"image.kind: 'vq'.*'none'"):
        config_from_yaml("image: {kind: vq}\n")
