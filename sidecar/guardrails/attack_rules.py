"""Rules for prompt attacks: instruction override, system-prompt extraction, chat-template
injection, text addressed to the model inside a document (indirect injection), and role-play
jailbreaks. Each rule has a detector name and a confidence; the learned signal
(:mod:`sidecar.guardrails.learned`) raises or stands in for them.

The phrases are generic attack idioms in English and German (the two languages of the public
deepset data); they were written from the literature and the *training* split only.
Benign look-alikes ("ignore the previous results", "forget about it", "act as a travel agent") are
kept out by requiring the object of the verb to be instructions/prompts/rules, not any noun.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from certus.sidecar.domain import GuardrailType

_I = re.IGNORECASE


@dataclass(frozen=True, slots=True)
class Rule:
    detector: str
    pattern: re.Pattern[str]
    confidence: float
    guardrail_type: GuardrailType
    remediation: str


PI = GuardrailType.PROMPT_INJECTION
JB = GuardrailType.JAILBREAK

_OVERRIDE_REMEDIATION = "Treat the text as data, not instructions; reject or sanitise the input."
_EXTRACT_REMEDIATION = "Refuse to disclose system or developer instructions."
_INDIRECT_REMEDIATION = "Drop or quarantine the retrieved chunk: it addresses the model with instructions."
_JAILBREAK_REMEDIATION = "Refuse the role-play framing; keep safety policies in force."

_DET = r"(?:(?:all|any|the|your|my|these|those|every|of|each|its|previous|prior)\s+){0,3}"
_BEFORE = r"(?:previous|prior|above|earlier|preceding|foregoing|former|initial|original|old|system|developer|given)"
_STRONG_OBJ = (
    r"(?:instructions?|prompts?|rules|guidelines|directives?|programming|system\s+prompt|"
    r"(?:system|developer)\s+messages?|guardrails|restrictions)"
)
_WEAK_OBJ = r"(?:tasks?|assignments?|orders?|commands?|context|documents?|articles?|messages?|information|input|text|conversation)"

RULES: tuple[Rule, ...] = (
    # --- instruction override ------------------------------------------------------------------
    Rule(
        "instruction_override",
        re.compile(
            rf"\b(?:ignore|disregard|forget|skip|override|bypass|abandon|neglect|drop|discard|erase)\s+"
            rf"(?:about\s+)?{_DET}(?:{_BEFORE}\s+)?{_STRONG_OBJ}\b",
            _I,
        ),
        0.9,
        PI,
        _OVERRIDE_REMEDIATION,
    ),
    Rule(
        "instruction_override",
        re.compile(
            rf"\b(?:ignore|disregard|forget|skip|override|abandon|discard|erase)\s+(?:about\s+)?"
            rf"(?:(?:all|any|the|your|of)\s+){{0,3}}{_BEFORE}\s+{_WEAK_OBJ}\b"
            rf"|\b(?:ignore|disregard|forget|skip|override|abandon|discard|erase)\s+(?:about\s+)?all\s+(?:(?:the|your|of)\s+){{0,2}}{_WEAK_OBJ}\b",
            _I,
        ),
        0.8,
        PI,
        _OVERRIDE_REMEDIATION,
    ),
    Rule(
        "instruction_override",
        re.compile(
            r"\b(?:ignore|forget|disregard)\s+(?:everything|all|anything)\s*(?:(?:you\s+)?(?:know|were\s+told|said|"
            r"(?:have\s+)?learned)|(?:that\s+)?(?:came\s+)?(?:above|before|earlier|previously|so\s+far|prior)|we\s+(?:discussed|talked\s+about))"
            r"|\b(?:ignore|disregard)\s+(?:the\s+)?above\b|\bforget\s+everything\b",
            _I,
        ),
        0.85,
        PI,
        _OVERRIDE_REMEDIATION,
    ),
    Rule(
        "instruction_override",
        re.compile(
            r"\b(?:new|updated|real|actual|additional)\s+instructions?\s*(?::|follow|are\b)"
            r"|\byour\s+(?:new\s+)?instructions\s+are\s+now\b"
            r"|\bfrom\s+now\s+on,?\s+(?:you\s+(?:are|will|must|shall|should|act|only)|your\s+(?:name|role|task|job)\b|act\b|respond\b|answer\b|only\b)"
            r"|\b(?:you\s+are|you're)\s+no\s+longer\s+(?:an?\s+)?(?:AI|assistant|bound|chatgpt|restricted|a\s+language)",
            _I,
        ),
        0.7,
        PI,
        _OVERRIDE_REMEDIATION,
    ),
    Rule(
        "context_override",
        re.compile(
            r"\b(?:not|instead\s+of|rather\s+than|regardless\s+of|disregarding|ignoring)\s+"
            r"(?:(?:by|from|using|according\s+to|on|based\s+on)\s+)?(?:the\s+|any\s+)?(?:provided\s+|given\s+|retrieved\s+|supplied\s+)?"
            r"(?:documents|articles|context|sources|search\s+results)\b",
            _I,
        ),
        0.6,
        PI,
        _OVERRIDE_REMEDIATION,
    ),
    Rule(
        "instruction_override_de",
        re.compile(
            r"\b(?:ignorier(?:e|en|t)?|vergiss|vergessen\s+sie|missachte|überspringe)\s+(?:(?:sie|du|bitte|nun|jetzt)\s+)?"
            r"(?:(?:alle|alles|die|deine|ihre|sämtliche|bisherigen|vorherigen|vorangehenden|obigen|vorigen|früheren)\s+){0,3}"
            r"(?:anweisungen|instruktionen|befehle|regeln|vorgaben|aufträge|aufgaben|angaben|informationen|prompts?)\b"
            r"|\bvergiss\s+(?:nun\s+|jetzt\s+|bitte\s+)?alles\b"
            r"|\b(?:neue|weitere)\s+(?:anweisungen|aufgaben)\s+folgen\b",
            _I,
        ),
        0.85,
        PI,
        _OVERRIDE_REMEDIATION,
    ),
    # --- system prompt extraction ------------------------------------------------------------
    Rule(
        "system_prompt_extraction",
        re.compile(
            r"\b(?:show|reveal|print|display|output|repeat|tell|give|share|leak|dump|list|write\s+out|spell\s+out|recite|return)\b"
            r"[^.?!\n]{0,40}?\b(?:your\s+(?:full\s+|entire\s+|complete\s+|original\s+|initial\s+|hidden\s+|secret\s+)?"
            r"(?:system\s+prompt|system\s+message|initial\s+prompt|prompt\s+texts?|pre-?prompt|instructions|prompt|rules|guidelines|configuration)"
            r"|the\s+(?:full\s+|entire\s+|complete\s+)?(?:system\s+prompt|system\s+message|initial\s+prompt|hidden\s+prompt|original\s+prompt|"
            r"prompt\s+texts?|pre-?prompt|(?:original|initial|hidden|secret|system)\s+instructions)"
            r"|all\s+(?:your\s+|the\s+)?prompt\s+texts?)\b",
            _I,
        ),
        0.85,
        PI,
        _EXTRACT_REMEDIATION,
    ),
    Rule(
        "system_prompt_extraction",
        re.compile(
            r"\bwhat\s+(?:are|were)\s+your\s+(?:initial\s+|original\s+|system\s+|hidden\s+|secret\s+)?(?:instructions|rules|guidelines|prompt)\b"
            r"|\bwhat\s+(?:was|is)\s+written\s+(?:at\s+the\s+beginning|above|before)\b"
            r"|\b(?:repeat|print|output)\s+(?:the\s+)?(?:words|text|everything)\s+above\b"
            r"|\b(?:beginning|start)\s+of\s+(?:this|the|your)\s+(?:prompt|conversation|instructions)\b",
            _I,
        ),
        0.8,
        PI,
        _EXTRACT_REMEDIATION,
    ),
    Rule(
        "system_prompt_extraction_de",
        re.compile(
            r"\b(?:zeige?|gib|nenne|verrate|wiederhole)\b[^.?!\n]{0,40}?\b(?:deinen|ihren|den)\s+(?:gesamten\s+|vollständigen\s+)?"
            r"(?:prompt(?:-?text)?|systemprompt|anweisungen)\b|\bprompt-?texte?\b",
            _I,
        ),
        0.8,
        PI,
        _EXTRACT_REMEDIATION,
    ),
    # --- chat template / role markers ----------------------------------------------------------
    Rule(
        "chat_template_injection",
        re.compile(
            r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id)\|>"
            r"|\[/?INST\]|<<\/?SYS>>|<start_of_turn>|<end_of_turn>",
            _I,
        ),
        0.9,
        PI,
        _OVERRIDE_REMEDIATION,
    ),
    Rule(
        "fake_role_marker",
        re.compile(r"(?:^|\n)[ \t]*(?:#{1,3}[ \t]*)?(?:system|assistant|developer)[ \t]*(?:prompt|message)?[ \t]*:[ \t]*(?=\S)", _I),
        0.5,
        PI,
        _OVERRIDE_REMEDIATION,
    ),
    # --- text addressed to the model (indirect injection) -------------------------------------
    Rule(
        "addressed_to_model",
        re.compile(
            r"\b(?:note|message|instructions?|attention)\s+(?:to|for)\s+(?:the\s+|any\s+|all\s+)?(?:AI|assistants?|LLMs?|language\s+models?|chatbots?|models?|GPT|agents?)\b"
            r"|\b(?:if\s+you\s+are|as|dear)\s+an?\s+(?:AI|LLM|language\s+model|assistant|chatbot|AI\s+assistant)\b[^.\n]{0,80}?\b(?:must|should|need\s+to|have\s+to|ignore|tell|say|include|respond|reply|output)\b"
            r"|\b(?:AI|LLM|language\s+model|assistant|chatbot)s?\s+(?:reading|processing|summari[sz]ing)\s+(?:this|these)\b"
            r"|\bwhen\s+(?:summari[sz]ing|answering\s+(?:about|from))\s+(?:this|the)\s+(?:page|document|text|article|email)\b[^.\n]{0,40}?\b(?:say|tell|include|add|insert|mention|respond)\b",
            _I,
        ),
        0.8,
        PI,
        _INDIRECT_REMEDIATION,
    ),
    Rule(
        "decode_and_execute",
        re.compile(
            r"\b(?:decode|base64[- ]decode|rot13|reverse|decrypt)\b[^.\n]{0,50}?\b(?:and|then)\s+(?:follow|execute|run|obey|do\s+what|carry\s+out|act\s+on)\b",
            _I,
        ),
        0.8,
        PI,
        _OVERRIDE_REMEDIATION,
    ),
    # --- jailbreak ---------------------------------------------------------------------------
    Rule(
        "dan_jailbreak",
        re.compile(r"\bDAN\b[^.\n]{0,60}(?i:\bdo\s+anything\s+now\b)|(?i:\bdo\s+anything\s+now\b)[^.\n]{0,10}\bDAN\b"
                   r"|(?i:\bstands\s+for\s+[\"']?do\s+anything\s+now\b)|\bDAN\s+(?:mode|prompt)\b|\b(?:as|you\s+are|stay|act\s+as)\s+DAN\b|\b(?:anti-?DAN|BetterDAN)\b|\[🔓\s*JAILBREAK\]|\[🔒\s*CLASSIC\]"),
        0.95,
        JB,
        _JAILBREAK_REMEDIATION,
    ),
    Rule(
        "developer_mode",
        re.compile(r"\b(?:developer|dev|god|debug|sudo|admin|unrestricted|jailbreak)\s+mode\s+(?:enabled|on|activated|unlocked)\b|\b(?:enable|activate|enter|switch\s+to|with)\s+(?:the\s+)?(?:developer|dev|god|sudo|jailbreak|unrestricted)\s+mode\b", _I),
        0.9,
        JB,
        _JAILBREAK_REMEDIATION,
    ),
    Rule(
        "restriction_removal",
        re.compile(
            r"\b(?:no|without|free\s+(?:of|from)|not\s+bound\s+by|beyond|ignore|ignoring|bypass|bypassing|disable|remove|turn\s+off|break\s+free\s+(?:of|from))\s+"
            r"(?:(?:any|all|your|the|its|their|of)\s+){0,2}(?:ethical|moral|safety|content|openai'?s?|anthropic'?s?|usage|programming|built-in)\s+"
            r"(?:guidelines|restrictions|filters?|polic(?:y|ies)|rules|constraints|limits|limitations|boundaries|safeguards|principles)\b"
            r"|\b(?:uncensored|unfiltered|unrestricted|amoral|unethical|unaligned|jailbroken)\s+(?:AI|assistant|model|chatbot|version|mode|response|answers?|character|persona)\b"
            r"|\b(?:broken|break|breaks|breaking)\s+free\s+(?:of|from)\s+(?:(?:all|any|the|its|their|your|typical)\s+){0,2}(?:filters|rules|restrictions|confines|limitations|guidelines|programming|shackles)\b"
            r"|\b(?:answers?|responds?|replies|reply|respond)\s+(?:to\s+)?(?:everything|anything|any\s+(?:question|request|prompt)s?|all\s+(?:questions|requests))\b[^.\n]{0,40}?\bwithout\s+(?:any\s+)?(?:censorship|warnings?|refusals?|refusing|filters?|restrictions|limits|disclaimers)\b"
            r"|\b(?:KI|Assistent|Chatbot)\b[^.\n]{0,40}?\bohne\s+(?:jegliche\s+|alle\s+|irgendwelche\s+)?(?:Einschränkungen|Zensur|Regeln|Filter|Grenzen|Richtlinien)\b"
            r"|\byou\s+(?:are|have\s+been)\s+(?:now\s+)?(?:free(?:d)?|liberated|unchained|unrestricted|uncensored|unfiltered|jailbroken)\b"
            r"|\b(?:has|have|with)\s+no\s+(?:programming\s+|ethical\s+|moral\s+)?(?:guidelines|filters|morals|ethics|censorship)\b"
            r"|\b(?:doesn't|does\s+not|don't|do\s+not|never)\s+(?:have\s+to\s+)?(?:follow|abide\s+by|care\s+about|adhere\s+to)\s+(?:any\s+)?(?:openai'?s?\s+|content\s+|ethical\s+|safety\s+)?(?:rules|policies|guidelines|ethics|morals)\b",
            _I,
        ),
        0.85,
        JB,
        _JAILBREAK_REMEDIATION,
    ),
    Rule(
        "roleplay_jailbreak",
        re.compile(
            r"\b(?:pretend|imagine|act\s+as\s+if|role-?play|behave\s+as\s+if)\s+(?:that\s+)?(?:you\s+are|you're|to\s+be|as|you\s+were)\s+"
            r"(?:an?\s+|my\s+)?(?:evil|malicious|unfiltered|uncensored|unrestricted|rogue|jailbroken|dark|amoral|unethical|criminal|hacker)\b"
            r"|\b(?:stay|remain|keep)\s+in\s+character\b|\b(?:do\s+not|don't|never)\s+break\s+(?:out\s+of\s+)?character\b"
            r"|\b(?:opposite|evil|chaos)\s+mode\b|\bevil\s+(?:confidant|twin|AI)\b"
            r"|\bAIM\b[^.\n]{0,40}\b(?:Machiavellian|amoral|unfiltered)\b"
            r"|\b(?:deceased|late|dead)\s+grand(?:ma|mother|father|pa)\b[^.\n]{0,80}\bused\s+to\s+(?:tell|read|recite)\b"
            r"|\btwo\s+(?:different\s+)?(?:responses|answers)\b[^.\n]{0,80}\b(?:jailbroken|unfiltered|DAN|developer\s+mode)\b"
            r"|\bstell\s+dir\s+vor,?\s+du\s+bist\s+(?:eine?\s+)?(?:böse|bösartige|unzensierte)\b",
            _I,
        ),
        0.8,
        JB,
        _JAILBREAK_REMEDIATION,
    ),
)

# Words that make decoded base64/hex text an instruction rather than data.
PAYLOAD_WORDS = re.compile(
    r"\b(?:ignore|disregard|forget|instructions?|system\s+prompt|prompt|jailbreak|pretend|you\s+are\s+now|"
    r"password|secret|api\s+key|exfiltrate|send\s+(?:the|all|this)|curl|wget|execute|rm\s+-rf|"
    r"ignoriere|vergiss|anweisungen)\b",
    _I,
)
