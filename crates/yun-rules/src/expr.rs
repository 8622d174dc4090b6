//! The rule expression language: CloudBase's JavaScript-like subset.
//!
//! ```text
//! or      := and ('||' and)*
//! and     := unary ('&&' unary)*
//! unary   := '!' unary | compare
//! compare := primary (('==' | '!=' | '<' | '<=' | '>' | '>=' | 'in') primary)?
//! primary := literal | '[' (or (',' or)*)? ']' | '(' or ')' | path
//! path    := ROOT ('.' NAME | '[' STRING | NUMBER ']')*      ROOT: auth doc request now resource
//! ```
//!
//! `===`/`!==` are accepted as `==`/`!=`. A hand-written parser: the language is ours
//! (its roots, its partial evaluation for query proofs), and small.

use serde_json::Value;

use crate::RuleError;

/// The variables a rule can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// The signed-in user: `{uid, openid, loginType, isAnonymous, customUserId}`, or null.
    Auth,
    /// The document as stored (reads, updates, deletes) or as it will be (creates).
    Doc,
    /// `request.data`: what a write sends.
    Request,
    /// Milliseconds since the epoch.
    Now,
    /// A stored file: `{openid, path}`.
    Resource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Value),
    Path(Root, Vec<String>),
    List(Vec<Expr>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    In(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Num(f64),
    Op(&'static str),
}

/// Rules are short; a bound keeps parsing and evaluation cheap whatever is stored.
const MAX_RULE_LEN: usize = 4096;
const MAX_DEPTH: usize = 64;

fn tokenize(src: &str) -> Result<Vec<Token>, RuleError> {
    let bad = |msg: String| RuleError::Syntax(msg);
    let chars: Vec<char> = src.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let n = text
                .parse()
                .map_err(|_| bad(format!("{text:?} is not a number")))?;
            tokens.push(Token::Num(n));
        } else if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(bad("a string is not closed".into())),
                    Some(&q) if q == c => break,
                    Some('\\') => {
                        let escaped = chars
                            .get(i + 1)
                            .ok_or_else(|| bad("a string is not closed".into()))?;
                        s.push(*escaped);
                        i += 2;
                        continue;
                    }
                    Some(&ch) => s.push(ch),
                }
                i += 1;
            }
            i += 1;
            tokens.push(Token::Str(s));
        } else {
            let rest: String = chars[i..chars.len().min(i + 3)].iter().collect();
            let op = [
                "===", "!==", "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "[",
                "]", ".", ",",
            ]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .ok_or_else(|| bad(format!("unexpected {c:?}")))?;
            i += op.chars().count();
            tokens.push(Token::Op(match op {
                "===" => "==",
                "!==" => "!=",
                other => other,
            }));
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Token::Op(o)) if *o == op) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), RuleError> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(RuleError::Syntax(format!("expected {op:?}")))
        }
    }

    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, RuleError>,
    ) -> Result<T, RuleError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(RuleError::Syntax(format!(
                "the rule nests deeper than {MAX_DEPTH}"
            )));
        }
        let out = f(self);
        self.depth -= 1;
        out
    }

    fn or(&mut self) -> Result<Expr, RuleError> {
        self.nested(|p| {
            let mut left = p.and()?;
            while p.eat("||") {
                left = Expr::Or(Box::new(left), Box::new(p.and()?));
            }
            Ok(left)
        })
    }

    fn and(&mut self) -> Result<Expr, RuleError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, RuleError> {
        if self.eat("!") {
            return self.nested(|p| Ok(Expr::Not(Box::new(p.unary()?))));
        }
        self.compare()
    }

    fn compare(&mut self) -> Result<Expr, RuleError> {
        let left = self.primary()?;
        let op = match self.peek() {
            Some(Token::Op("==")) => Some(CmpOp::Eq),
            Some(Token::Op("!=")) => Some(CmpOp::Ne),
            Some(Token::Op("<")) => Some(CmpOp::Lt),
            Some(Token::Op("<=")) => Some(CmpOp::Le),
            Some(Token::Op(">")) => Some(CmpOp::Gt),
            Some(Token::Op(">=")) => Some(CmpOp::Ge),
            Some(Token::Ident(word)) if word == "in" => {
                self.at += 1;
                return Ok(Expr::In(Box::new(left), Box::new(self.primary()?)));
            }
            _ => None,
        };
        match op {
            Some(op) => {
                self.at += 1;
                Ok(Expr::Cmp(op, Box::new(left), Box::new(self.primary()?)))
            }
            None => Ok(left),
        }
    }

    fn primary(&mut self) -> Result<Expr, RuleError> {
        let token = self
            .tokens
            .get(self.at)
            .cloned()
            .ok_or_else(|| RuleError::Syntax("the rule ends too early".into()))?;
        self.at += 1;
        match token {
            Token::Num(n) => Ok(Expr::Lit(
                serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
            )),
            Token::Str(s) => Ok(Expr::Lit(Value::String(s))),
            Token::Op("(") => {
                let inner = self.or()?;
                self.expect(")")?;
                Ok(inner)
            }
            Token::Op("[") => {
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.or()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ok(Expr::List(items))
            }
            Token::Ident(word) => match word.as_str() {
                "true" => Ok(Expr::Lit(Value::Bool(true))),
                "false" => Ok(Expr::Lit(Value::Bool(false))),
                "null" => Ok(Expr::Lit(Value::Null)),
                root => {
                    let root = match root {
                        "auth" => Root::Auth,
                        "doc" => Root::Doc,
                        "request" => Root::Request,
                        "now" => Root::Now,
                        "resource" => Root::Resource,
                        other => {
                            return Err(RuleError::Syntax(format!(
                                "unknown variable {other:?} (rules read auth, doc, request, now, resource)"
                            )))
                        }
                    };
                    let mut path = Vec::new();
                    loop {
                        if self.eat(".") {
                            match self.tokens.get(self.at) {
                                Some(Token::Ident(name)) => path.push(name.clone()),
                                _ => {
                                    return Err(RuleError::Syntax(
                                        "expected a field name after '.'".into(),
                                    ))
                                }
                            }
                            self.at += 1;
                        } else if self.eat("[") {
                            match self.tokens.get(self.at) {
                                Some(Token::Str(name)) => path.push(name.clone()),
                                Some(Token::Num(n)) if n.fract() == 0.0 && *n >= 0.0 => {
                                    path.push(format!("{n}"))
                                }
                                _ => {
                                    return Err(RuleError::Syntax(
                                        "expected a string or index in [...]".into(),
                                    ))
                                }
                            }
                            self.at += 1;
                            self.expect("]")?;
                        } else {
                            break;
                        }
                    }
                    if root == Root::Request && path.first().map(String::as_str) != Some("data") {
                        return Err(RuleError::Syntax(
                            "request is only readable as request.data".into(),
                        ));
                    }
                    Ok(Expr::Path(root, path))
                }
            },
            Token::Op(op) => Err(RuleError::Syntax(format!("unexpected {op:?}"))),
        }
    }
}

pub fn parse(src: &str) -> Result<Expr, RuleError> {
    if src.len() > MAX_RULE_LEN {
        return Err(RuleError::Syntax(format!(
            "a rule is at most {MAX_RULE_LEN} bytes"
        )));
    }
    let mut parser = Parser {
        tokens: tokenize(src)?,
        at: 0,
        depth: 0,
    };
    let expr = parser.or()?;
    if parser.at != parser.tokens.len() {
        return Err(RuleError::Syntax(format!(
            "unexpected {:?} after the end of the rule",
            parser.tokens[parser.at]
        )));
    }
    Ok(expr)
}
