"""Block Kit rules as Slack enforces them, for the Slack double.

``block_errors(blocks, surface)`` returns the list of violations Slack would report for a
``blocks`` array (empty when Slack would accept it). Each error names its place with a JSON
pointer, as Slack's own ``invalid_blocks`` answers do, e.g.
``"must be at most 75 characters [json-pointer:/blocks/3/elements/0/text/text]"``.

Every rule cites the reference page it comes from. Lengths count characters (Python
``len``), as the reference pages state them. ``slack_sdk``'s model classes are used as a
second layer only: they check many lengths but neither uniqueness nor most counts.

References (docs.slack.dev):

- BLOCKS:   https://docs.slack.dev/reference/block-kit/blocks
- ACTIONS:  https://docs.slack.dev/reference/block-kit/blocks/actions-block
- CONTEXT:  https://docs.slack.dev/reference/block-kit/blocks/context-block
- SECTION:  https://docs.slack.dev/reference/block-kit/blocks/section-block
- HEADER:   https://docs.slack.dev/reference/block-kit/blocks/header-block
- IMAGE:    https://docs.slack.dev/reference/block-kit/blocks/image-block
- INPUT:    https://docs.slack.dev/reference/block-kit/blocks/input-block
- BUTTON:   https://docs.slack.dev/reference/block-kit/block-elements/button-element
- SELECT:   https://docs.slack.dev/reference/block-kit/block-elements/select-menu-element
- MULTI:    https://docs.slack.dev/reference/block-kit/block-elements/multi-select-menu-element
- TEXT:     https://docs.slack.dev/reference/block-kit/composition-objects/text-object
- OPTION:   https://docs.slack.dev/reference/block-kit/composition-objects/option-object
- CONFIRM:  https://docs.slack.dev/reference/block-kit/composition-objects/confirmation-dialog-object
- MODAL:    https://docs.slack.dev/reference/views/modal-views
- PLAIN:    https://docs.slack.dev/reference/block-kit/block-elements/plain-text-input-element
- HOME:     https://docs.slack.dev/surfaces/app-home (views: https://docs.slack.dev/reference/views)
"""

from __future__ import annotations

from typing import Any

# BLOCKS: "You can include up to 50 blocks in each message, and 100 blocks in modals or
# Home tabs."
MAX_BLOCKS = {"message": 50, "modal": 100, "home": 100}
# ACTIONS/SECTION/...: "block_id ... Maximum length for this field is 255 characters.
# block_id should be unique for each message and each iteration of a message."
MAX_BLOCK_ID = 255
# BUTTON (and every interactive element): "action_id ... Should be unique among all other
# action_ids in the containing block. Maximum length is 255 characters."
MAX_ACTION_ID = 255
# ACTIONS: "There is a maximum of 25 elements in each action block."
MAX_ACTIONS_ELEMENTS = 25
# CONTEXT: "An array of image elements and text objects. Maximum number of items is 10."
MAX_CONTEXT_ELEMENTS = 10
# SECTION: text "Minimum length for the text in this field is 1 and maximum length is 3000";
# fields "Maximum number of items is 10. Maximum length for the text in each item is 2000".
MAX_SECTION_TEXT = 3000
MAX_SECTION_FIELDS = 10
MAX_SECTION_FIELD_TEXT = 2000
# HEADER: "in the form of a plain_text text object. Maximum length ... is 150 characters."
MAX_HEADER_TEXT = 150
# TEXT: "The minimum length is 1 and maximum length is 3000 characters."
MAX_TEXT = 3000
# BUTTON: text "Can only be of type: plain_text ... Maximum length ... is 75 characters";
# url "Maximum length is 3000 characters"; value "Maximum length is 2000 characters";
# style primary or danger; accessibility_label "Maximum length ... is 75 characters".
MAX_BUTTON_TEXT = 75
MAX_URL = 3000
MAX_BUTTON_VALUE = 2000
MAX_ACCESSIBILITY_LABEL = 75
BUTTON_STYLES = ("primary", "danger")
# SELECT/MULTI: placeholder "A plain_text only text object ... Maximum length for the text
# in this field is 150 characters"; options "Maximum number of options is 100";
# option_groups "Maximum number of option groups is 100".
MAX_PLACEHOLDER = 150
MAX_OPTIONS = 100
MAX_OPTION_GROUPS = 100
# OPTION: text "select, and multi-select menus can only use plain_text objects ... Maximum
# length for the text in this field is 75 characters"; value "Maximum length for this field
# is 150 characters"; description "plain_text ... Maximum length ... is 75 characters".
MAX_OPTION_TEXT = 75
MAX_OPTION_VALUE = 150
MAX_OPTION_DESCRIPTION = 75
# CONFIRM: title plain_text max 100; text max 300; confirm and deny plain_text max 30;
# style primary or danger.
MAX_CONFIRM_TITLE = 100
MAX_CONFIRM_TEXT = 300
MAX_CONFIRM_BUTTON = 30
# IMAGE: image_url max 3000, alt_text max 2000, title plain_text max 2000.
MAX_IMAGE_ALT = 2000
MAX_IMAGE_TITLE = 2000
# INPUT: label "A label ... plain_text ... Maximum length for the text in this field is 2000";
# hint "plain_text ... Maximum length for the text in this field is 2000 characters";
# optional and dispatch_action are booleans.
MAX_INPUT_LABEL = 2000
MAX_INPUT_HINT = 2000
# PLAIN: placeholder "Maximum length for the text in this field is 150 characters";
# min_length "Maximum value is 3000"; max_length "Minimum value is 1" (and Slack caps input
# at 3000 characters); "Works with block types: Input" -- nowhere else.
MAX_PLAIN_INPUT_LENGTH = 3000
# MODAL: title plain_text max 24; close/submit plain_text max 24; private_metadata max 3000;
# callback_id max 255.
MAX_VIEW_TITLE = 24
MAX_VIEW_BUTTON = 24
MAX_PRIVATE_METADATA = 3000
MAX_CALLBACK_ID = 255
# chat.postMessage (https://docs.slack.dev/reference/methods/chat.postMessage): top-level
# text longer than 40,000 characters is refused with ``msg_too_long``.
MAX_MESSAGE_TEXT = 40000

# Interactive elements the double understands fully; others the bot does not build are
# refused rather than waved through, so a new element type gets rules before it is used.
_SELECTS = ("static_select", "multi_static_select")
_ELEMENTS = ("button", *_SELECTS)
#: Elements that only an input block may hold (PLAIN: "Works with block types: Input").
_INPUT_ONLY_ELEMENTS = ("plain_text_input",)
# CONTEXT: elements are image elements and text objects.
_CONTEXT_ELEMENTS = ("image", "plain_text", "mrkdwn")
_TEXT_TYPES = ("plain_text", "mrkdwn")
# Input blocks are for modals and Home tabs; chat.postMessage answers invalid_blocks for one
# (slackapi/python-slack-sdk#1257, "WebClient chat_postMessage doesn't support input
# blocks - errors with {'ok': False, 'error': 'invalid_blocks'}").
_BLOCK_TYPES = {
    "message": ("section", "context", "actions", "header", "divider", "image"),
    "modal": ("section", "context", "actions", "header", "divider", "image", "input"),
    "home": ("section", "context", "actions", "header", "divider", "image", "input"),
}


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, pointer: str, message: str) -> None:
        self.items.append(f"{message} [json-pointer:{pointer}]")


def block_errors(blocks: Any, surface: str = "message") -> list[str]:
    """Everything Slack would refuse in ``blocks`` on ``surface`` ("message", "modal" or
    "home"); an empty list when Slack would accept the array."""
    errors = _Errors()
    if not isinstance(blocks, list):
        errors.add("/blocks", "must be an array")
        return errors.items
    limit = MAX_BLOCKS[surface]
    if len(blocks) > limit:
        errors.add("/blocks", f"must provide at most {limit} items")
    seen_block_ids: dict[str, int] = {}
    for index, block in enumerate(blocks):
        pointer = f"/blocks/{index}"
        if not isinstance(block, dict):
            errors.add(pointer, "must be an object")
            continue
        kind = block.get("type")
        if kind not in _BLOCK_TYPES[surface]:
            errors.add(f"{pointer}/type", f"unsupported type: {kind!r}")
            continue
        block_id = block.get("block_id")
        if block_id is not None:
            if _string(errors, f"{pointer}/block_id", block_id, 1, MAX_BLOCK_ID):
                if block_id in seen_block_ids:
                    errors.add(
                        f"{pointer}/block_id",
                        f"duplicate block_id {block_id!r} (also at /blocks/"
                        f"{seen_block_ids[block_id]})",
                    )
                else:
                    seen_block_ids[block_id] = index
        _BLOCK_CHECKS[kind](errors, pointer, block)
    if not errors.items:
        errors.items.extend(_sdk_errors(blocks))
    return errors.items


def view_errors(view: Any) -> list[str]:
    """What Slack would refuse in a ``view`` object (views.open/push/update/publish)."""
    errors = _Errors()
    if not isinstance(view, dict):
        errors.add("/view", "must be an object")
        return errors.items
    kind = view.get("type")
    if kind not in ("modal", "home"):
        errors.add("/view/type", f"unsupported type: {kind!r}")
        return errors.items
    if kind == "modal":
        # MODAL: title is required.
        _text(errors, "/view/title", view.get("title"), MAX_VIEW_TITLE, plain=True)
    for key in ("close", "submit"):
        if view.get(key) is not None:
            _text(errors, f"/view/{key}", view[key], MAX_VIEW_BUTTON, plain=True)
    if view.get("private_metadata") is not None:
        _string(errors, "/view/private_metadata", view["private_metadata"], 0, MAX_PRIVATE_METADATA)
    if view.get("callback_id") is not None:
        _string(errors, "/view/callback_id", view["callback_id"], 0, MAX_CALLBACK_ID)
    # MODAL: "submit is required when an input block is within the blocks array."
    blocks = view.get("blocks")
    if (
        kind == "modal"
        and isinstance(blocks, list)
        and any(isinstance(b, dict) and b.get("type") == "input" for b in blocks)
        and view.get("submit") is None
    ):
        errors.add("/view/submit", "is required when the view has input blocks")
    errors.items.extend(
        e.replace("[json-pointer:/blocks", "[json-pointer:/view/blocks")
        for e in block_errors(blocks, kind)
    )
    return errors.items


# Modals, "Handling view submissions" (https://docs.slack.dev/surfaces/modals): the answer to a
# view_submission is empty (the modal closes) or carries a ``response_action``: ``errors``
# with "an errors object ... keys are the block_id of the input blocks" and the message to
# show under each; ``update`` / ``push`` with a ``view``; ``clear``.
VIEW_RESPONSE_ACTIONS = ("errors", "update", "push", "clear")


def view_ack_errors(view: dict[str, Any], ack: Any) -> list[str]:
    """What Slack would refuse in the app's answer ``ack`` to a view_submission of ``view``
    (an empty answer closes the modal and is always fine)."""
    errors = _Errors()
    if ack in (None, "", {}):
        return errors.items
    if not isinstance(ack, dict):
        errors.add("", "must be an object")
        return errors.items
    action = ack.get("response_action")
    if action not in VIEW_RESPONSE_ACTIONS:
        errors.add("/response_action", f"must be one of {VIEW_RESPONSE_ACTIONS}")
        return errors.items
    if action == "errors":
        fields = ack.get("errors")
        inputs = {
            b.get("block_id")
            for b in view.get("blocks") or []
            if isinstance(b, dict) and b.get("type") == "input"
        }
        if not isinstance(fields, dict) or not fields:
            errors.add("/errors", "must be a non-empty object")
            return errors.items
        for block_id, message in fields.items():
            if block_id not in inputs:
                errors.add(f"/errors/{block_id}", "is not the block_id of an input block")
            _string(errors, f"/errors/{block_id}", message, 1, MAX_TEXT)
    elif action in ("update", "push"):
        errors.items.extend(view_errors(ack.get("view")))
    return errors.items


# -- blocks ---------------------------------------------------------------------------------


def _section(errors: _Errors, pointer: str, block: dict[str, Any]) -> None:
    text, fields = block.get("text"), block.get("fields")
    if text is None and fields is None:
        # SECTION: text is "not required if a valid array of fields objects is provided".
        errors.add(pointer, "must define either `text` or `fields`")
    if text is not None:
        _text(errors, f"{pointer}/text", text, MAX_SECTION_TEXT)
    if fields is not None:
        if not isinstance(fields, list) or not fields:
            errors.add(f"{pointer}/fields", "must be a non-empty array")
        else:
            if len(fields) > MAX_SECTION_FIELDS:
                errors.add(f"{pointer}/fields", f"must provide at most {MAX_SECTION_FIELDS} items")
            for i, field in enumerate(fields):
                _text(errors, f"{pointer}/fields/{i}", field, MAX_SECTION_FIELD_TEXT)
    accessory = block.get("accessory")
    if accessory is not None:
        _element(errors, f"{pointer}/accessory", accessory, set())


def _context(errors: _Errors, pointer: str, block: dict[str, Any]) -> None:
    elements = block.get("elements")
    if not isinstance(elements, list) or not elements:
        errors.add(f"{pointer}/elements", "must be a non-empty array")
        return
    if len(elements) > MAX_CONTEXT_ELEMENTS:
        errors.add(f"{pointer}/elements", f"must provide at most {MAX_CONTEXT_ELEMENTS} items")
    for i, element in enumerate(elements):
        where = f"{pointer}/elements/{i}"
        kind = element.get("type") if isinstance(element, dict) else None
        if kind not in _CONTEXT_ELEMENTS:
            errors.add(f"{where}/type", f"unsupported type: {kind!r}")
        elif kind == "image":
            _image_element(errors, where, element)
        else:
            _text(errors, where, element, MAX_TEXT)


def _actions(errors: _Errors, pointer: str, block: dict[str, Any]) -> None:
    elements = block.get("elements")
    if not isinstance(elements, list) or not elements:
        errors.add(f"{pointer}/elements", "must be a non-empty array")
        return
    if len(elements) > MAX_ACTIONS_ELEMENTS:
        errors.add(f"{pointer}/elements", f"must provide at most {MAX_ACTIONS_ELEMENTS} items")
    action_ids: set[str] = set()
    for i, element in enumerate(elements):
        _element(errors, f"{pointer}/elements/{i}", element, action_ids)


def _header(errors: _Errors, pointer: str, block: dict[str, Any]) -> None:
    _text(errors, f"{pointer}/text", block.get("text"), MAX_HEADER_TEXT, plain=True)


def _divider(errors: _Errors, pointer: str, block: dict[str, Any]) -> None:
    return None


def _image(errors: _Errors, pointer: str, block: dict[str, Any]) -> None:
    _image_element(errors, pointer, block)
    if block.get("title") is not None:
        _text(errors, f"{pointer}/title", block["title"], MAX_IMAGE_TITLE, plain=True)


def _input(errors: _Errors, pointer: str, block: dict[str, Any]) -> None:
    _text(errors, f"{pointer}/label", block.get("label"), MAX_INPUT_LABEL, plain=True)
    if block.get("hint") is not None:
        _text(errors, f"{pointer}/hint", block["hint"], MAX_INPUT_HINT, plain=True)
    for flag in ("optional", "dispatch_action"):
        if flag in block and not isinstance(block[flag], bool):
            errors.add(f"{pointer}/{flag}", "must be a boolean")
    element = block.get("element")
    if not isinstance(element, dict):
        errors.add(f"{pointer}/element", "is required")
        return
    _element(errors, f"{pointer}/element", element, set(), in_input=True)


_BLOCK_CHECKS = {
    "section": _section,
    "context": _context,
    "actions": _actions,
    "header": _header,
    "divider": _divider,
    "image": _image,
    "input": _input,
}


# -- elements and composition objects -------------------------------------------------------


def _element(
    errors: _Errors, pointer: str, element: Any, action_ids: set[str], *, in_input: bool = False
) -> None:
    if not isinstance(element, dict):
        errors.add(pointer, "must be an object")
        return
    kind = element.get("type")
    if kind in _INPUT_ONLY_ELEMENTS and not in_input:
        errors.add(f"{pointer}/type", f"{kind!r} is only allowed in an input block")
        return
    if kind not in _ELEMENTS and kind not in _INPUT_ONLY_ELEMENTS:
        errors.add(f"{pointer}/type", f"unsupported type: {kind!r}")
        return
    action_id = element.get("action_id")
    if action_id is not None and _string(
        errors, f"{pointer}/action_id", action_id, 1, MAX_ACTION_ID
    ):
        if action_id in action_ids:
            errors.add(
                f"{pointer}/action_id",
                f"duplicate action_id {action_id!r}: must be unique within its block",
            )
        action_ids.add(action_id)
    if element.get("confirm") is not None:
        _confirm(errors, f"{pointer}/confirm", element["confirm"])
    if kind == "button":
        _button(errors, pointer, element)
    elif kind == "plain_text_input":
        _plain_text_input(errors, pointer, element)
    else:
        _select(errors, pointer, element, multi=kind.startswith("multi_"))


def _plain_text_input(errors: _Errors, pointer: str, element: dict[str, Any]) -> None:
    if element.get("placeholder") is not None:
        _text(errors, f"{pointer}/placeholder", element["placeholder"], MAX_PLACEHOLDER, plain=True)
    for flag in ("multiline", "focus_on_load"):
        if flag in element and not isinstance(element[flag], bool):
            errors.add(f"{pointer}/{flag}", "must be a boolean")
    low, high = element.get("min_length"), element.get("max_length")
    for key, value, floor in (("min_length", low, 0), ("max_length", high, 1)):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            errors.add(f"{pointer}/{key}", "must be an integer")
        elif not floor <= value <= MAX_PLAIN_INPUT_LENGTH:
            errors.add(f"{pointer}/{key}", f"must be between {floor} and {MAX_PLAIN_INPUT_LENGTH}")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        errors.add(f"{pointer}/min_length", "must not exceed max_length")
    if element.get("initial_value") is not None and not isinstance(element["initial_value"], str):
        errors.add(f"{pointer}/initial_value", "must be a string")


def _button(errors: _Errors, pointer: str, button: dict[str, Any]) -> None:
    _text(errors, f"{pointer}/text", button.get("text"), MAX_BUTTON_TEXT, plain=True)
    if button.get("url") is not None:
        _string(errors, f"{pointer}/url", button["url"], 1, MAX_URL)
    if button.get("value") is not None:
        _string(errors, f"{pointer}/value", button["value"], 1, MAX_BUTTON_VALUE)
    if button.get("style") is not None and button["style"] not in BUTTON_STYLES:
        errors.add(f"{pointer}/style", f"must be one of {BUTTON_STYLES}")
    if button.get("accessibility_label") is not None:
        _string(
            errors,
            f"{pointer}/accessibility_label",
            button["accessibility_label"],
            1,
            MAX_ACCESSIBILITY_LABEL,
        )


def _select(errors: _Errors, pointer: str, select: dict[str, Any], *, multi: bool) -> None:
    if select.get("placeholder") is not None:
        _text(errors, f"{pointer}/placeholder", select["placeholder"], MAX_PLACEHOLDER, plain=True)
    options, groups = select.get("options"), select.get("option_groups")
    # SELECT: "Either options or option_groups is required"; "If option_groups is specified,
    # this field should not be."
    if (options is None) == (groups is None):
        errors.add(pointer, "must provide exactly one of `options` or `option_groups`")
    values: list[str] = []
    if options is not None:
        values = _options(errors, f"{pointer}/options", options, MAX_OPTIONS)
    if groups is not None:
        if not isinstance(groups, list) or not groups:
            errors.add(f"{pointer}/option_groups", "must be a non-empty array")
        else:
            if len(groups) > MAX_OPTION_GROUPS:
                errors.add(
                    f"{pointer}/option_groups", f"must provide at most {MAX_OPTION_GROUPS} items"
                )
            for g, group in enumerate(groups):
                where = f"{pointer}/option_groups/{g}"
                if not isinstance(group, dict):
                    errors.add(where, "must be an object")
                    continue
                _text(errors, f"{where}/label", group.get("label"), MAX_OPTION_TEXT, plain=True)
                values += _options(errors, f"{where}/options", group.get("options"), MAX_OPTIONS)
    initial = select.get("initial_options") if multi else select.get("initial_option")
    if initial is not None:
        chosen = initial if multi else [initial]
        key = "initial_options" if multi else "initial_option"
        if not isinstance(chosen, list):
            errors.add(f"{pointer}/{key}", "must be an array")
        else:
            for i, option in enumerate(chosen):
                value = option.get("value") if isinstance(option, dict) else None
                if value not in values:
                    # SELECT/MULTI: initial options must "exactly match" one of `options`.
                    errors.add(f"{pointer}/{key}", f"option {i} is not one of the options")
    if multi and select.get("max_selected_items") is not None:
        count = select["max_selected_items"]
        if not isinstance(count, int) or count < 1:
            # MULTI: "Specifies the maximum number of items that can be selected in the
            # menu. Minimum number is 1."
            errors.add(f"{pointer}/max_selected_items", "must be at least 1")


def _options(errors: _Errors, pointer: str, options: Any, limit: int) -> list[str]:
    if not isinstance(options, list) or not options:
        errors.add(pointer, "must be a non-empty array")
        return []
    if len(options) > limit:
        errors.add(pointer, f"must provide at most {limit} items")
    values = []
    for i, option in enumerate(options):
        where = f"{pointer}/{i}"
        if not isinstance(option, dict):
            errors.add(where, "must be an object")
            continue
        _text(errors, f"{where}/text", option.get("text"), MAX_OPTION_TEXT, plain=True)
        if _string(errors, f"{where}/value", option.get("value"), 1, MAX_OPTION_VALUE):
            values.append(option["value"])
        if option.get("description") is not None:
            _text(
                errors,
                f"{where}/description",
                option["description"],
                MAX_OPTION_DESCRIPTION,
                plain=True,
            )
        if option.get("url") is not None:
            # OPTION: "The url attribute is only available in overflow menus."
            errors.add(f"{where}/url", "is only allowed in overflow menus")
    return values


def _confirm(errors: _Errors, pointer: str, confirm: Any) -> None:
    if not isinstance(confirm, dict):
        errors.add(pointer, "must be an object")
        return
    _text(errors, f"{pointer}/title", confirm.get("title"), MAX_CONFIRM_TITLE, plain=True)
    _text(errors, f"{pointer}/text", confirm.get("text"), MAX_CONFIRM_TEXT)
    _text(errors, f"{pointer}/confirm", confirm.get("confirm"), MAX_CONFIRM_BUTTON, plain=True)
    _text(errors, f"{pointer}/deny", confirm.get("deny"), MAX_CONFIRM_BUTTON, plain=True)
    if confirm.get("style") is not None and confirm["style"] not in BUTTON_STYLES:
        errors.add(f"{pointer}/style", f"must be one of {BUTTON_STYLES}")


def _image_element(errors: _Errors, pointer: str, image: dict[str, Any]) -> None:
    if image.get("slack_file") is None:
        _string(errors, f"{pointer}/image_url", image.get("image_url"), 1, MAX_URL)
    _string(errors, f"{pointer}/alt_text", image.get("alt_text"), 1, MAX_IMAGE_ALT)


def _text(errors: _Errors, pointer: str, value: Any, limit: int, *, plain: bool = False) -> None:
    """A text object: TEXT's type/length rules, `limit` from the field that holds it, and
    `plain` where that field accepts only plain_text."""
    if not isinstance(value, dict):
        errors.add(pointer, "must be a text object")
        return
    kind = value.get("type")
    if kind not in _TEXT_TYPES:
        errors.add(f"{pointer}/type", f"must be one of {_TEXT_TYPES}")
        return
    if plain and kind != "plain_text":
        errors.add(f"{pointer}/type", "must be plain_text")
    # TEXT: emoji "is only usable when type is plain_text"; verbatim "only usable when type
    # is mrkdwn".
    if "emoji" in value and kind != "plain_text":
        errors.add(f"{pointer}/emoji", "is only allowed for plain_text")
    if "verbatim" in value and kind != "mrkdwn":
        errors.add(f"{pointer}/verbatim", "is only allowed for mrkdwn")
    _string(errors, f"{pointer}/text", value.get("text"), 1, min(limit, MAX_TEXT))


def _string(errors: _Errors, pointer: str, value: Any, low: int, high: int) -> bool:
    if not isinstance(value, str):
        errors.add(pointer, "must be a string")
        return False
    if len(value) < low:
        errors.add(pointer, f"must be at least {low} characters")
        return False
    if len(value) > high:
        errors.add(pointer, f"must be at most {high} characters")
        return False
    return True


def _sdk_errors(blocks: list[Any]) -> list[str]:
    """The second layer: slack_sdk's own model checks."""
    from slack_sdk.errors import SlackObjectFormationError
    from slack_sdk.models.blocks import Block

    out = []
    for index, raw in enumerate(blocks):
        try:
            block = Block.parse(raw)
            if block is None:
                raise ValueError(f"unknown block type {raw.get('type')!r}")
            block.to_dict()
        except (SlackObjectFormationError, TypeError, KeyError, ValueError) as exc:
            out.append(f"{exc} [json-pointer:/blocks/{index}]")
    return out
