"""`format_info(description)`: a `describe` dict as a plain-text block for a terminal."""

from __future__ import annotations

from typing import List


def _count(n) -> str:
    if n is None:
        return "?"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


def _number(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _values(values) -> str:
    return ", ".join(_number(v) for v in values)


def _line(label: str, value) -> str:
    return f"  {label + ':':<12}{value}"


def _pipeline(d: dict) -> List[str]:
    s = d["scheduler"]
    fewstep = d["fewstep_class"] or f"not supported ({d['fewstep_note']})"
    lines = [f"Diffusers pipeline folder: {d['path']}",
             _line("class", f"{d['class']} (fewstep: {fewstep})"),
             _line("family", f"{d['family']}: {d['family_name']} ({d['family_reason']})" if d["family"]
                   else f"unknown ({d['family_reason']})"),
             _line("scheduler", f"{s['class']}, prediction {s['prediction_type']}"
                   + (f" (fewstep samples with {s['fewstep_scheduler']})" if s["fewstep_scheduler"] else "")),
             _line("variants", ", ".join(d["variants"]) or "none"),
             "  components:"]
    for name, c in d["components"].items():
        row = f"    {name:<16}{c['library'] or '':<14}{c['class'] or '':<30}"
        if not c["present"]:
            row += "missing"
        elif "dtype" in c:
            row += f"{c['dtype'] or 'no weights':<10}{_count(c['parameters']) + ' params':<14}"
            if c["variants"]:
                row += " variants: " + ", ".join(f"{v} ({t})" for v, t in c["variants"].items())
            if c["pickled"]:
                row += " pickled: " + ", ".join(c["pickled"])
        lines.append(row.rstrip())
    return lines


def _model(d: dict) -> List[str]:
    variants = ", ".join(f"{v} ({t})" for v, t in d["variants"].items()) or "none"
    return [f"Diffusers model folder: {d['path']}",
            _line("class", f"{d['class']} ({d['library']})"),
            _line("weights", f"{d['dtype'] or 'none'}, {_count(d['parameters'])} params"),
            _line("variants", variants),
            _line("fits", f"{d['base_name']} ({d['base_reason']})" if d["base"] else f"unknown ({d['base_reason']})")]


def _lora(d: dict) -> List[str]:
    f = d["fits"]
    alphas = f" (alphas {_values(d['alphas'])})" if len(d["alphas"]) > 1 else ""
    alphas += f", {d['alpha_source']}" + (" (= rank)" if d["alpha_source"] == "default" else "")
    modules = f" ({d['conv_modules']} conv)" if d["conv"] else ", no conv layers"
    lines = [f"LoRA file: {d['path']}",
             _line("format", f"{d['format_name']} [{d['format']}]"),
             _line("rank", _number(d["rank"]) + (f" (ranks {_values(d['ranks'])})" if len(d["ranks"]) > 1 else "")),
             _line("alpha", _number(d["alpha"]) + alphas),
             _line("weights", f"{d['dtype']}, {_count(d['parameters'])} params"),
             _line("modules", f"{d['modules']}{modules}")]
    for name, c in d["components"].items():
        lines.append(f"    {name:<16}{c['modules']:>5} modules  rank {_values(c['ranks'])}  "
                     f"alpha {_values(c['alphas'])}" + (f"  conv {c['conv_modules']}" if c["conv_modules"] else ""))
    fit = f"{f['name']} [{f['base']}]" if f["base"] else "undetermined"
    lines.append(_line("fits", fit + (f": {'; '.join(f['evidence'])}" if f["evidence"] else "")))
    if d["unrecognised_count"] or d["unsupported"]:
        lines.append(_line("not read", ", ".join([f"{n} {w} keys" for w, n in d["unsupported"].items()]
                                                 + ([f"{d['unrecognised_count']} unrecognised keys"]
                                                    if d["unrecognised_count"] else []))))
    check = d.get("base_check")
    if check:
        if check["fits"]:
            placed = ", ".join(f"{c} {n}" for c, n in check["placed"].items())
            lines.append(_line("on base", f"places on {check['base']} [{check['base_family']}] ({placed} modules)"))
        else:
            lines.append(_line("on base", f"does NOT fit {check['base']} [{check['base_family']}]: {check['error']}"))
    return lines


def _checkpoint(d: dict) -> List[str]:
    return [f"Single-file checkpoint: {d['path']}",
            _line("family", f"{d['family']}: {d['family_name']}"),
            _line("pipeline", d["fewstep_class"]),
            _line("weights", f"{d['dtype']}, {_count(d['parameters'])} params"),
            _line("parts", ", ".join(f"{p} ({n} tensors)" for p, n in d["parts"].items()))]


def _ip_adapter(d: dict) -> List[str]:
    return [f"IP-Adapter file: {d['path']}",
            _line("variant", f"{d['variant']}, {d['image_tokens']} image tokens"),
            _line("widths", f"cross-attention {d['cross_attention_dim']}, image embeddings {d['image_embed_dim']}"),
            _line("layers", f"{d['attention_layers']} cross-attention layers"),
            _line("fits", d["base_name"] or "undetermined (cross-attention width of no released model)"),
            _line("weights", f"{d['dtype']}, {_count(d['parameters'])} params")]


def _repository(d: dict) -> List[str]:
    lines = [f"Folder of weight files: {d['path']}"]
    for item in d["items"]:
        lines.append(f"  {item['name']}:")
        lines += ["  " + line for line in _FORMATTERS.get(item["kind"], _unknown)(item)[1:] + _recipe(item)]
    return lines


def _recipe(d: dict) -> List[str]:
    """The recipe line of a known published model: `fewstep generate --recipe NAME` samples it as its card says."""
    r = d.get("recipe")
    if not r:
        return []
    return [_line("recipe", f"{r['name']} ({r['settings']}); sample with --recipe {r['name']}"
                  + (f" --steps {r['steps']}" if r["steps"] else "") + f"; card {r['card']}")]


def _unknown(d: dict) -> List[str]:
    return ["", f"  {d.get('error', 'not recognised')}"]


_FORMATTERS = {"pipeline": _pipeline, "model": _model, "lora": _lora, "checkpoint": _checkpoint,
               "ip_adapter": _ip_adapter, "repository": _repository, "unknown": _unknown}


def format_info(description: dict) -> str:
    """A `describe(...)` dict as readable plain text (one header line, then indented fields)."""
    kind = description.get("kind")
    if kind not in _FORMATTERS:
        raise ValueError(f"Not a fewstep.info description (kind {kind!r}); pass what describe() returned.")
    extra = _recipe(description) if kind != "repository" else []
    return "\n".join(_FORMATTERS[kind](description) + extra)
