"""Stack loading: Hydra composition, presets, overrides, interpolation, secrets, and diagnostics
that name the file and line of every schema error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from zsconf.errors import StackError
from zsconf.loading import MASK, load_stack

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "examples/stacks/quickstart"


def write_stack(root: Path, text: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "stack.yaml").write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    for rel, body in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    return root


def errors(stack_dir: Path, overrides: tuple[str, ...] = ()) -> list:
    with pytest.raises(StackError) as info:
        load_stack(stack_dir, overrides)
    return info.value.diagnostics


BASIC = """
tenants:
  acme: {}
datasets:
  chats: {path: data/chats.jsonl, format: alpaca}
models:
  base: {base: debug/tiny-qwen2}
deployments:
  chat:
    model: base@latest
    instances: 1
"""


def test_quickstart_composes_presets_then_its_own_values() -> None:
    loaded = load_stack(QUICKSTART)
    ft = loaded.stack.finetunes["faq-lora"]
    assert ft.method == "lora"  # from recipes/finetune/lora.yaml
    assert ft.hyperparameters.lr_scheduler == "cosine"  # preset value kept
    assert ft.hyperparameters.learning_rate == pytest.approx(2e-3)  # stack overrides the preset
    assert ft.hyperparameters.lora_dropout == 0.0
    assert ft.tenant == "demo"  # platform.default_tenant
    assert loaded.stack.compressions["faq-w8a8"].strategy == "smoothquant-w8a8"
    assert loaded.stack.evaluations["eval-w8a8"].metrics[0] == "accuracy"
    assert any(p.name == "lora.yaml" for p in loaded.sources)
    assert loaded.via_hydra == "none"  # simple presets are merged without Hydra
    assert len(loaded.config_hash) == 64


def test_command_line_overrides_and_hash() -> None:
    plain = load_stack(QUICKSTART)
    scaled = load_stack(QUICKSTART, ["deployments.faq-chat.instances=4"])
    assert scaled.stack.deployments["faq-chat"].instances == 4
    assert scaled.config_hash != plain.config_hash
    assert load_stack(QUICKSTART).config_hash == plain.config_hash
    added = load_stack(QUICKSTART, ["+deployments.faq-chat.engine_args.dtype=float32"])
    assert added.stack.deployments["faq-chat"].engine_args == {"dtype": "float32"}


def test_override_of_unknown_key_names_the_command_line() -> None:
    diags = errors(QUICKSTART, ("deployments.faq-chat.instancez=4",))
    assert diags[0].file == "<command line>"
    assert "instancez" in diags[0].message


def test_bad_override_syntax() -> None:
    diags = errors(QUICKSTART, ("deployments.faq-chat.instances=[1,",))
    assert diags[0].file == "<command line>"


def test_override_value_failing_the_schema_points_at_the_command_line() -> None:
    diags = errors(QUICKSTART, ("deployments.faq-chat.instances=0",))
    assert [(d.file, d.path) for d in diags] == [("<command line>", "deployments.faq-chat.instances")]


def test_missing_preset_names_stack_file(tmp_path: Path) -> None:
    root = write_stack(tmp_path, "defaults:\n  - finetune/nope@finetunes.x\n  - _self_\n" + BASIC)
    diags = errors(root)
    assert diags[0].file == str(root / "stack.yaml")
    assert (diags[0].path, diags[0].line) == ("defaults.0", 2)
    assert "finetune/nope" in diags[0].message
    assert "lora" in diags[0].message  # lists the available options


def test_local_group_file_errors_map_through_the_package(tmp_path: Path) -> None:
    root = write_stack(
        tmp_path,
        "defaults:\n  - team/chat@deployments.chat2\n  - _self_\n" + BASIC,
        files={"team/chat.yaml": "# a local preset\nmodel: base@latest\ninstances: 500\n"},
    )
    diags = errors(root)
    assert [(Path(d.file).name, d.line, d.path) for d in diags] == [
        ("chat.yaml", 3, "deployments.chat2.instances")
    ]


def test_interpolation_env_and_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZS_TEST_FLAVOR", "cpu.small")
    root = write_stack(
        tmp_path,
        BASIC
        + """
  chat2:
    model: ${deployments.chat.model}
    flavor: ${oc.env:ZS_TEST_FLAVOR}
    instances: ${.max_model_len}
    max_model_len: 16
""",
    )
    loaded = load_stack(root)
    chat2 = loaded.stack.deployments["chat2"]
    assert (chat2.model, chat2.flavor, chat2.instances) == ("base@latest", "cpu.small", 16)
    assert loaded.stack.deployments["chat"].instances == 1


def test_bad_interpolation_is_a_diagnostic(tmp_path: Path) -> None:
    root = write_stack(tmp_path, BASIC + "    flavor: ${models.nope.base}\n")
    diags = errors(root)
    assert "nope" in diags[0].message
    assert diags[0].file == str(root / "stack.yaml")


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    root = write_stack(tmp_path, "tenants:\n  acme: {}\ndatasets:\n  x: [unclosed\n")
    diags = errors(root)
    assert diags[0].file.endswith("stack.yaml")
    assert diags[0].line in (4, 5)
    assert "YAML" in diags[0].message


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    root = write_stack(tmp_path, "tenants:\n  acme: {}\n  acme: {}\n")
    diags = errors(root)
    assert "duplicate key acme" in diags[0].message
    assert diags[0].line == 3


def test_missing_stack_file(tmp_path: Path) -> None:
    diags = errors(tmp_path)
    assert "zsconf init" in diags[0].message


def test_plain_stack_skips_hydra_with_omegaconf_scalars(tmp_path: Path) -> None:
    text = BASIC + "    engine_args: {lr: 2e-3, when: 2024-01-01}\n"
    plain = load_stack(write_stack(tmp_path / "a", text))
    assert plain.via_hydra == "none"
    # Same scalar rules as OmegaConf: 2e-3 is a float, dates stay strings.
    assert plain.stack.deployments["chat"].engine_args == {"lr": 2e-3, "when": "2024-01-01"}
    # The same stack with an interpolation that forces everything through Hydra: same config.
    forced = load_stack(
        write_stack(tmp_path / "b", text + "platform:\n  default_tenant: ${oc.select:tenants.nope,acme}\n")
    )
    assert forced.via_hydra == "full"
    assert forced.stack.deployments["chat"].engine_args == plain.stack.deployments["chat"].engine_args
    assert (
        forced.stack.model_dump()
        == plain.stack.model_copy(update={"platform": forced.stack.platform}).model_dump()
    )


# One error per kind (and the platform), all reported at once with the line of the bad key.
EVERY_KIND_BAD = """
platform:
  gateway: {port: 70000}
tenants:
  acme:
    quotas: {max_cards: -1}
datasets:
  chats: {path: data/chats.jsonl, format: parquet}
models:
  base: {description: no base given}
finetunes:
  ft:
    model: base
    datasets: {train: chats}
    hyperparameters:
      learning_rate: 0.5
    output: {model: bot}
compressions:
  cq:
    model: bot
    strategy: W3A8
    output: {model: bot-q}
evaluations:
  ev:
    model: bot
    dataset: chats
    metrics: [f1]
deployments:
  chat:
    model: bot@11
service_groups:
  app:
    keys: 6
    colour: blue
"""


def test_every_kind_reports_file_line_and_path(tmp_path: Path) -> None:
    root = write_stack(tmp_path, EVERY_KIND_BAD)
    got = {(d.path, d.line) for d in errors(root)}
    assert got == {
        ("platform.gateway.port", 2),
        ("tenants.acme.quotas.max_cards", 5),
        ("datasets.chats.format", 7),
        ("models.base.base", 9),  # missing: points at the resource
        ("finetunes.ft.hyperparameters.learning_rate", 15),
        ("compressions.cq.strategy", 20),
        ("evaluations.ev.metrics.0", 26),
        ("deployments.chat.model", 29),
        ("service_groups.app.keys", 32),
        ("service_groups.app.colour", 33),
    }
    diags = {d.path: d for d in errors(root)}
    assert all(d.file == str(root / "stack.yaml") for d in diags.values())
    assert diags["service_groups.app.colour"].message == "unknown field 'colour'"
    assert diags["models.base.base"].message == "missing required field 'base'"
    assert "versions 1-10" in diags["deployments.chat.model"].message
    assert str(diags["tenants.acme.quotas.max_cards"]).startswith(f"{root / 'stack.yaml'}:5: ")


def test_invalid_resource_name_is_located(tmp_path: Path) -> None:
    root = write_stack(
        tmp_path, "tenants:\n  acme: {}\ndatasets:\n  '1bad':\n    path: x.jsonl\n    format: alpaca\n"
    )
    diags = errors(root)
    assert diags[0].path == "datasets.1bad" and diags[0].line == 4
    assert "invalid name" in diags[0].message


# --- secrets -----------------------------------------------------------------------------------

SECRET_STACK = """
platform:
  state_url: postgresql+psycopg://zs:${secret:DB_PASSWORD}@db.internal/zsconf
tenants:
  acme: {}
deployments:
  chat:
    model: base@latest
    notify: {webhook: "https://hooks.example/${secret:HOOK_TOKEN}"}
models:
  base: {base: debug/tiny-qwen2}
"""


def test_secret_from_environment_and_mask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZSCONF_SECRET_DB_PASSWORD", "hunter2-db")
    monkeypatch.setenv("HOOK_TOKEN", "tok-123456")
    loaded = load_stack(write_stack(tmp_path, SECRET_STACK))
    assert loaded.stack.platform.state_url == "postgresql+psycopg://zs:hunter2-db@db.internal/zsconf"
    assert loaded.secrets.values == {"hunter2-db", "tok-123456"}
    assert loaded.secrets.paths == {"platform.state_url", "deployments.chat.notify.webhook"}
    dumped = loaded.secrets.data(loaded.stack.model_dump(mode="json"))
    assert "hunter2-db" not in str(dumped) and "tok-123456" not in str(dumped)
    assert MASK in dumped["platform"]["state_url"]
    assert "hunter2-db" not in repr(loaded.secrets) and "hunter2-db" not in repr(loaded)


def test_secret_from_secrets_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DB_PASSWORD", raising=False)
    monkeypatch.delenv("ZSCONF_SECRET_DB_PASSWORD", raising=False)
    monkeypatch.delenv("HOOK_TOKEN", raising=False)
    monkeypatch.delenv("ZSCONF_SECRET_HOOK_TOKEN", raising=False)
    root = write_stack(
        tmp_path,
        SECRET_STACK,
        files={
            ".zsconf/secrets.yaml": "DB_PASSWORD: from-file\n",
            "secrets.yaml": "HOOK_TOKEN: t0k\nDB_PASSWORD: x\n",
        },
    )
    loaded = load_stack(root)
    assert "from-file" in loaded.stack.platform.state_url  # .zsconf/secrets.yaml wins
    assert loaded.stack.deployments["chat"].notify.webhook == "https://hooks.example/t0k"


def test_missing_secret_names_where_to_put_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DB_PASSWORD", "ZSCONF_SECRET_DB_PASSWORD", "HOOK_TOKEN", "ZSCONF_SECRET_HOOK_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    diags = errors(write_stack(tmp_path, SECRET_STACK))
    assert "ZSCONF_SECRET_" in diags[0].message
    assert diags[0].path in ("platform.state_url", "deployments.chat.notify.webhook")


def test_secret_in_an_invalid_value_is_masked_in_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZSCONF_SECRET_SVC", "s3cr3t value!")
    root = write_stack(
        tmp_path,
        "tenants:\n  acme: {}\nservice_groups:\n  app:\n    services: ['${secret:SVC}']\n",
    )
    diags = errors(root)
    assert diags[0].path == "service_groups.app.services.0"
    assert "s3cr3t" not in str(diags[0]) and MASK in diags[0].message


def test_yaml_error_in_a_group_file_names_that_file(tmp_path: Path) -> None:
    root = write_stack(
        tmp_path,
        "defaults:\n  - team/chat@deployments.chat2\n  - _self_\n" + BASIC,
        files={"team/chat.yaml": "model: base@1\ninstances: [1,\n"},
    )
    diags = errors(root)
    assert (diags[0].file, diags[0].line) == (str(root / "team/chat.yaml"), 3)
    assert "YAML syntax error" in diags[0].message


def test_deleting_a_resource_from_the_command_line() -> None:
    loaded = load_stack(QUICKSTART, ["~evaluations.eval-lora"])
    assert list(loaded.stack.evaluations) == ["eval-w8a8"]
    assert list(loaded.stack.finetunes) == ["faq-lora"]  # untouched kinds come through whole


def test_defaults_without_self_put_the_stack_last_quietly(tmp_path: Path) -> None:
    import warnings

    root = write_stack(
        tmp_path,
        "defaults:\n  - team/chat@deployments.chat2\n" + BASIC + "  chat2:\n    instances: 2\n",
        files={"team/chat.yaml": "model: base@latest\ninstances: 7\n"},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_stack(root)
    assert loaded.stack.deployments["chat2"].instances == 2


PRESET_STACK = """
defaults:
  - finetune/lora@finetunes.a
  - team/small@finetunes.b.hyperparameters
  - _self_
  - team/late@deployments.chat
tenants:
  acme: {}
datasets:
  chats: {path: c.jsonl, format: alpaca}
models:
  base: {base: debug/tiny-qwen2}
finetunes:
  a:
    model: base
    datasets: {train: chats}
    hyperparameters: {lora_rank: 4, lora_targets: [q_proj]}
    output: {model: bot-a}
  b:
    model: base
    datasets: {train: chats}
    hyperparameters: {epochs: 1}
    output: {model: bot-b}
deployments:
  chat: {model: bot-a@latest, instances: 1, engine_args: {x: 1}}
"""
PRESET_FILES = {
    "team/small.yaml": "# @package _global_\nepochs: 9\nlearning_rate: 1.0e-3\nlora_targets: [v_proj]\n",
    "team/late.yaml": "instances: 3\nengine_args: {y: 2}\nmodel: ???\n",
}


@pytest.mark.parametrize(
    "overrides",
    [(), ("finetunes.a.hyperparameters.epochs=7",), ("+finetunes.b.description=${finetunes.a.model}",)],
)
def test_presets_merged_without_hydra_equal_hydra(tmp_path: Path, overrides: tuple[str, ...]) -> None:
    from zsconf.loading.compose import compose_stack

    root = write_stack(tmp_path, PRESET_STACK, files=PRESET_FILES)
    fast = compose_stack(root, overrides)
    slow = compose_stack(root, overrides, force_hydra=True)
    assert slow.via_hydra == "full"
    assert fast.config == slow.config
    b = fast.config["finetunes"]["b"]["hyperparameters"]
    assert b == {"epochs": 1, "learning_rate": 1e-3, "lora_targets": ["v_proj"]}  # stack wins
    chat = fast.config["deployments"]["chat"]
    # After _self_: the preset wins, but `???` never replaces a value.
    assert (chat["instances"], chat["engine_args"], chat["model"]) == (3, {"x": 1, "y": 2}, "bot-a@latest")


@pytest.mark.parametrize("name", ["quickstart", "ascend-prod"])
def test_examples_compose_the_same_with_and_without_hydra(name: str) -> None:
    from zsconf.loading.compose import compose_stack

    root = REPO / "examples/stacks" / name
    assert compose_stack(root).config == compose_stack(root, force_hydra=True).config


def test_preset_value_errors_point_into_the_preset(tmp_path: Path) -> None:
    root = write_stack(
        tmp_path,
        "defaults:\n  - team/chat@deployments.chat2\n  - _self_\n" + BASIC,
        files={"team/chat.yaml": "# preset\nmodel: base@latest\nqps: -1\n"},
    )
    diags = errors(root)
    assert [(d.file, d.line, d.path) for d in diags] == [
        (str(root / "team/chat.yaml"), 3, "deployments.chat2.qps")
    ]
