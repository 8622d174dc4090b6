exports.main = async () => { return 'unterminated ;
