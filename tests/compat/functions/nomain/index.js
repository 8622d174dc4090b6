exports.handler = async () => 'wrong export name';
